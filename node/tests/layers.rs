//! The code's layers, checked from its source: the modules of `node/src` form no import
//! cycle, and each inner room keeps out what it must not see (the vault is pure, redb
//! lives in `store/`, openraft in `store/`, `cluster/` and the type config, HTTP stays
//! out of `service/`, and `api/` reaches the core only through `service/`).
//!
//! A reference is any `crate::<module>` path outside a file's `#[cfg(test)]` module,
//! in a `use` or inline; comments are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its path relative to `dir`.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("source directory") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                let code = production_code(&std::fs::read_to_string(&p).expect("readable"));
                out.push((rel, code));
            }
        }
    }
    out.sort();
    out
}

/// The file without its test module and comments.
fn production_code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // Keep `//` inside string literals such as URLs.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow each `prefix` in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    code.match_indices(prefix)
        .filter(|(i, _)| {
            // A whole path segment: not `kura_crate::` or `my_crate::`.
            !code[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// The top-level module a file of `node/src` belongs to (`api/tokens.rs` → `api`).
fn top_module(rel: &str) -> String {
    rel.split('/')
        .next()
        .unwrap()
        .trim_end_matches(".rs")
        .to_owned()
}

/// Module → the modules it refers to, at the granularity `module_of` gives.
fn graph(
    files: &[(String, String)],
    module_of: impl Fn(&str) -> String,
    refs_of: impl Fn(&str, &str) -> BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, code) in files {
        let m = module_of(rel);
        let refs = refs_of(rel, code);
        let entry = g.entry(m.clone()).or_default();
        entry.extend(refs.into_iter().filter(|r| *r != m));
    }
    g
}

/// A cycle in `g`, if there is one, as the modules along it.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(m) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = path.iter().position(|p| p == m).unwrap();
                let mut cycle = path[at..].to_vec();
                cycle.push(m.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(m.to_owned(), Mark::Open);
        path.push(m.to_owned());
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, next, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(m.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut marks, &mut Vec::new()))
}

fn crate_refs(_rel: &str, code: &str) -> BTreeSet<String> {
    paths_after(code, "crate::")
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_modules_of_node_src_form_no_cycle() {
    let files: Vec<_> = files(&src())
        .into_iter()
        .filter(|(rel, _)| rel != "lib.rs" && rel != "main.rs")
        .collect();
    let g = graph(&files, top_module, crate_refs);
    assert!(g.len() > 10, "the walk found the modules: {g:?}");
    assert!(
        g["api"].contains("service"),
        "references are seen: {:?}",
        g["api"]
    );
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_chaos_sweeps_files_form_no_cycle() {
    let chaos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-tests/src/chaos");
    let files = files(&chaos);
    let g = graph(
        &files,
        |rel| rel.trim_end_matches(".rs").to_owned(),
        |_, code| {
            paths_after(code, "super::")
                .into_iter()
                .map(str::to_owned)
                .collect()
        },
    );
    assert!(
        g.contains_key("params") && g.contains_key("schedule"),
        "{g:?}"
    );
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle in chaos/: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into_iter().map(String::from).collect()))
    .collect();
    let c = find_cycle(&g).expect("a cycle");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
    let mut acyclic = g.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
    assert_eq!(
        paths_after(
            "use crate::vault::X; let y = crate::store::z(); kura_crate::no",
            "crate::"
        ),
        ["store", "vault"].into_iter().collect()
    );
}

/// Files under `prefix` (a directory like `vault/` or a file like `raft_types.rs`).
fn under<'a>(files: &'a [(String, String)], prefixes: &[&str]) -> Vec<&'a (String, String)> {
    files
        .iter()
        .filter(|(rel, _)| prefixes.iter().any(|p| rel.starts_with(p)))
        .collect()
}

/// Files that mention any of `needles` as a path (`needle::`), outside `allowed`.
fn offenders(files: &[(String, String)], needles: &[&str], allowed: &[&str]) -> Vec<String> {
    files
        .iter()
        .filter(|(rel, _)| !allowed.iter().any(|a| rel.starts_with(a)))
        .filter_map(|(rel, code)| {
            let hits: Vec<&str> = needles
                .iter()
                .copied()
                .filter(|n| !paths_after(code, &format!("{n}::")).is_empty())
                .collect();
            (!hits.is_empty()).then(|| format!("{rel} uses {}", hits.join(", ")))
        })
        .collect()
}

#[test]
fn the_vault_is_pure() {
    let files = files(&src());
    let vault: Vec<_> = under(&files, &["vault/"]).into_iter().cloned().collect();
    assert!(vault.len() > 5);
    for (rel, code) in &vault {
        let outside: Vec<_> = paths_after(code, "crate::")
            .into_iter()
            .filter(|m| *m != "vault")
            .collect();
        assert!(
            outside.is_empty(),
            "{rel} reaches out of vault/: {outside:?}"
        );
    }
    let found = offenders(
        &vault,
        &["tokio", "redb", "hyper", "axum", "http", "openraft", "rand"],
        &[],
    );
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn storage_and_consensus_libraries_stay_in_their_rooms() {
    let files = files(&src());
    let redb = offenders(&files, &["redb"], &["store/"]);
    assert!(redb.is_empty(), "redb outside store/: {redb:?}");
    let raft = offenders(
        &files,
        &["openraft", "openraft_rt"],
        &["store/", "cluster/", "raft_types.rs", "runtime.rs"],
    );
    assert!(raft.is_empty(), "openraft outside its rooms: {raft:?}");
    // The check sees them where they are.
    assert!(!offenders(&files, &["redb"], &[]).is_empty());
}

#[test]
fn the_service_layer_never_sees_http_and_the_api_never_sees_the_core() {
    let files = files(&src());
    let service: Vec<_> = under(&files, &["service/"]).into_iter().cloned().collect();
    assert!(!service.is_empty(), "service/ exists");
    let http = offenders(&service, &["axum", "hyper", "http", "http_body_util"], &[]);
    assert!(http.is_empty(), "HTTP in service/: {http:?}");
    let api: Vec<_> = under(&files, &["api/"]).into_iter().cloned().collect();
    for (rel, code) in &api {
        let core: Vec<_> = paths_after(code, "crate::")
            .into_iter()
            .filter(|m| ["cluster", "crypto", "store", "raft_types"].contains(m))
            .collect();
        assert!(core.is_empty(), "{rel} reaches the core: {core:?}");
    }
}

#[test]
fn every_api_route_is_registered_with_its_description() {
    // Routes registered with `routes!` carry their `#[utoipa::path]` into the OpenAPI
    // description; a plain `.route(` would serve a path the description lacks. The one
    // plain route of the client API and the admin plane serves the description itself;
    // the peer plane (node to node, `api/peer.rs`) is not part of the API.
    let files = files(&src());
    let code_of = |rel: &str| {
        files
            .iter()
            .find(|(r, _)| r == rel)
            .map(|(_, c)| c.clone())
            .unwrap()
    };
    let mod_rs = code_of("api/mod.rs");
    assert_eq!(mod_rs.matches(".route(").count(), 1);
    let at = mod_rs.find(".route(").unwrap();
    assert!(
        mod_rs[at..]
            .lines()
            .nth(1)
            .unwrap_or("")
            .contains("OPENAPI_PATH"),
        "the plain route serves the description"
    );
    assert!(mod_rs.matches(".routes(routes!(").count() >= 20);
    for (rel, code) in under(&files, &["api/"]) {
        if rel != "api/mod.rs" && rel != "api/peer.rs" {
            assert!(!code.contains(".route("), "{rel} registers a route");
        }
    }
}
