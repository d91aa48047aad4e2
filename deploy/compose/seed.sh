#!/usr/bin/env bash
# Seeds moto for the compose demo (runs once in the amazon/aws-cli image).
#
#   IAM        role AppTierCmkScanner with the member trust + KMS read policy
#              from deploy/iam (moto stores them; it does not enforce them)
#   us-east-1  a symmetric customer managed key tagged app_tier=gold, with
#              alias/app-tier and rotation enabled      -> present 1
#   eu-west-1  an untagged key only                     -> present 0
set -euo pipefail

: "${AWS_ENDPOINT_URL:?AWS_ENDPOINT_URL must point at moto}"

echo "waiting for moto at ${AWS_ENDPOINT_URL}"
for attempt in $(seq 1 60); do
  if aws sts get-caller-identity >/dev/null 2>&1; then
    break
  fi
  if [ "${attempt}" -eq 60 ]; then
    echo "moto did not answer within 60s" >&2
    exit 1
  fi
  sleep 1
done

if aws iam get-role --role-name AppTierCmkScanner >/dev/null 2>&1; then
  echo "moto is already seeded"
  exit 0
fi

aws iam create-role \
  --role-name AppTierCmkScanner \
  --assume-role-policy-document file:///iam/member-role-trust-policy.json >/dev/null
aws iam put-role-policy \
  --role-name AppTierCmkScanner \
  --policy-name KmsRead \
  --policy-document file:///iam/member-role-policy.json

key_id="$(aws kms create-key \
  --region us-east-1 \
  --description "App-Tier key (compose demo)" \
  --key-spec SYMMETRIC_DEFAULT \
  --key-usage ENCRYPT_DECRYPT \
  --tags TagKey=app_tier,TagValue=gold \
  --query KeyMetadata.KeyId --output text)"
aws kms create-alias --region us-east-1 --alias-name alias/app-tier --target-key-id "${key_id}"
aws kms enable-key-rotation --region us-east-1 --key-id "${key_id}"
echo "us-east-1: tagged key ${key_id}"

other_id="$(aws kms create-key \
  --region eu-west-1 \
  --description "untagged key (compose demo)" \
  --query KeyMetadata.KeyId --output text)"
echo "eu-west-1: untagged key ${other_id} (no App-Tier key)"
