//! Build metadata: `MAPCAST_BUILD_COMMIT`, the short git commit of the
//! checkout (or "unknown" outside git), for crash reports and logs.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MAPCAST_BUILD_COMMIT={commit}");
    // Rebuild when HEAD moves; only watch files that exist (a missing one
    // would make cargo rerun this script on every build).
    let mut watched = false;
    let head = git(&["rev-parse", "--git-path", "HEAD"]);
    let branch =
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r]));
    let packed = git(&["rev-parse", "--git-path", "packed-refs"]);
    for path in [head, branch, packed].into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
            watched = true;
        }
    }
    if !watched {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
