"""moto_server for the benchmarks, with cheap CreateKey.

moto 5 generates an RSA-2048 key pair for every CreateKey, symmetric keys included
(moto/kms/utils.py, generate_private_key), which costs tens of milliseconds of CPU per key and
caps seeding at about 30 keys/s. The pair is only used by Sign, Verify and GetPublicKey, which
the exporter never calls: this launcher defers its generation to first use, then runs the
ordinary moto_server (same arguments, e.g. -H 127.0.0.1 -p PORT). Every answer the exporter
gets is unchanged.
"""

import sys

import moto.kms.models as kms_models
from moto.server import main

_generate = kms_models.generate_private_key


class DeferredPrivateKey:
    """Generates the real key pair when anything asks for it."""

    def __init__(self, key_spec):
        self._key_spec = key_spec
        self._key = None

    def __getattr__(self, name):
        if self._key is None:
            self._key = _generate(self._key_spec)
        return getattr(self._key, name)


kms_models.generate_private_key = DeferredPrivateKey

if __name__ == "__main__":
    sys.exit(main())
