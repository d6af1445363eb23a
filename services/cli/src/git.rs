//! Earlier versions of a file from git history, for `schemas check --against`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// A version of a file at a commit.
#[derive(Debug, Clone)]
pub struct Version {
    /// The commit, abbreviated.
    pub commit: String,
    /// The file's text at that commit.
    pub text: String,
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .context("cannot run git; is it installed?")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("git printed text that is not UTF-8")
}

/// Checks that `root` is inside a git work tree and `rev` names a commit.
pub fn check_revision(root: &Path, rev: &str) -> anyhow::Result<()> {
    git(root, &["rev-parse", "--is-inside-work-tree"])
        .with_context(|| format!("{} is not inside a git repository", root.display()))?;
    git(
        root,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .with_context(|| {
        format!(
            "'{rev}' does not name a commit of the repository at {}",
            root.display()
        )
    })?;
    Ok(())
}

/// Every committed version of `path` (relative to `root`) reachable from `rev`, oldest first.
pub fn history(root: &Path, path: &str, rev: &str) -> anyhow::Result<Vec<Version>> {
    let log = git(root, &["log", "--format=%h", "--reverse", rev, "--", path])?;
    let mut versions = Vec::new();
    for commit in log.lines().filter(|l| !l.is_empty()) {
        // A commit that deleted the file has no version of it.
        if let Ok(text) = git(root, &["show", &format!("{commit}:./{path}")]) {
            versions.push(Version {
                commit: commit.to_owned(),
                text,
            });
        }
    }
    Ok(versions)
}
