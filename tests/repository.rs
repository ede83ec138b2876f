//! The repository stands alone: nothing in it points outside it, its documents' links resolve,
//! and the README's quick start is what CI runs.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The tracked files (git ls-files), as CI's clean clone has them.
fn tracked() -> Vec<PathBuf> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(ROOT)
        .output()
        .expect("git");
    assert!(out.status.success());
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| Path::new(ROOT).join(String::from_utf8_lossy(p).as_ref()))
        .collect()
}

#[test]
fn no_tracked_file_refers_outside_the_repository() {
    // Spelled in parts so that this file does not match itself.
    let outside = [
        format!("../{}", "shared"),
        format!("{}/AMAD.md", "shared"),
        format!("{}/TOOLCHAIN.md", "shared"),
    ];
    let mut found = vec![];
    for path in tracked() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // binary files
        };
        for o in &outside {
            if text.contains(o.as_str()) {
                found.push(format!("{} names {o}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_documents_links_resolve() {
    let mut broken = vec![];
    let docs = tracked()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter(|p| !p.components().any(|c| c.as_os_str() == "node_modules"));
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !doc.parent().unwrap().join(target).exists() {
                broken.push(format!("{}: {target}", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_readme_quick_start_is_what_ci_runs() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let block = &readme[start..];
    let code = block
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a code block");
    let commands: Vec<&str> = code
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands, ["scripts/serve.sh", "scripts/test.sh"], "{code}");
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "exec scripts/test.sh"),
        ".ci/run must run the README's test command:\n{ci}"
    );
    for c in &commands {
        assert!(Path::new(ROOT).join(c).is_file(), "{c}");
    }
}

/// Every repository path a tracked file names (a doc, a script, a source file, a fixture) exists, so
/// no comment, doc or script points at a file the repository does not hold.
#[test]
fn named_files_exist() {
    let re = fancy_regex::Regex::new(
        r"(?<![\w/.-])(?:docs|scripts|tests|src|shaders|www|examples|fuzz)/[\w./-]+\.(?:md|rs|sh|py|wgsl|js|mjs|json|html|toml|png|safetensors|bin)\b",
    )
    .unwrap();
    let mut missing = vec![];
    for path in tracked() {
        if path.components().any(|c| c.as_os_str() == "node_modules") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for m in re.find_iter(&text).flatten() {
            let named = m.as_str();
            if !Path::new(ROOT).join(named).exists() {
                missing.push(format!("{} names {named}", path.display()));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}
