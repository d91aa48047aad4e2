//! Bakes the git revision into the binary for `app_tier_cmk_build_info{revision}`.
//! `GIT_REVISION` (e.g. a Docker build argument) wins over asking git.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    let revision = std::env::var("GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BUILD_GIT_REVISION={revision}");
}
