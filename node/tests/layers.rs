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
    let http = offenders(
        &service,
        &["axum", "hyper", "http", "http_body_util", "bytes"],
        &[],
    );
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

#[test]
fn every_problem_code_the_node_answers_is_one_the_sdk_knows() {
    // The codes are written where the errors are: in the service layer's
    // `service_error!` tables and `code()` functions, and in the HTTP layer's own
    // problems. Each must be a `kura_types::ProblemCode`, so clients can match on it.
    let files = files(&src());
    let mut found = BTreeSet::new();
    for (rel, code) in under(
        &files,
        &[
            "service/",
            "api/",
            "vault/command.rs",
            "vault/card.rs",
            "vault/payment.rs",
        ],
    ) {
        let quoted = |marker: &str| {
            code.match_indices(marker)
                .filter_map(|(i, _)| {
                    let rest = &code[i + marker.len()..];
                    let rest = rest.trim_start();
                    let rest = rest.strip_prefix('"')?;
                    let end = rest.find('"')?;
                    Some(rest[..end].to_owned())
                })
                .collect::<Vec<_>>()
        };
        let mut codes = quoted("=> (");
        codes.extend(quoted("Problem::bad_request("));
        codes.extend(quoted("Problem::not_found("));
        codes.extend(quoted("Problem::forbidden("));
        codes.extend(quoted("Problem::unprocessable("));
        // `Problem::new(status, "code", ...)`: the second argument.
        for (i, _) in code.match_indices("Problem::new(") {
            let args = &code[i..];
            if let Some(q) = args.find(",\n").or_else(|| args.find(", ")) {
                let rest = args[q + 1..].trim_start();
                if let Some(rest) = rest.strip_prefix('"') {
                    codes.push(rest[..rest.find('"').unwrap()].to_owned());
                }
            }
        }
        // The vault's refusal and card codes (`Refusal::X => "code"`).
        if rel.starts_with("vault/") {
            for (start, _) in code.match_indices("fn code(") {
                let body = &code[start..];
                let body = &body[..body.find("\n    }\n").unwrap_or(body.len())];
                codes.extend(body.match_indices("=> \"").map(|(i, _)| {
                    let rest = &body[i + 4..];
                    rest[..rest.find('"').unwrap()].to_owned()
                }));
            }
        }
        for c in codes.into_iter().filter(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        }) {
            found.insert((c, rel.clone()));
        }
    }
    assert!(found.len() > 40, "the scan finds the codes: {found:?}");
    // The vault's refusal codes a client never sees as such (mapped or internal).
    let internal = [
        "payment_id_taken",
        "idempotency_key_taken",
        "token_id_taken",
        "unknown_merchant",
        "unknown_data_key",
        "data_key_exists",
        "fingerprint_key_exists",
        "key_rewrapped",
        "audit_moved",
    ];
    let unknown: Vec<_> = found
        .iter()
        .filter(|(c, _)| {
            kura_types::ProblemCode::parse(c) == kura_types::ProblemCode::Unknown
                && !internal.contains(&c.as_str())
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "codes the SDK does not know: {unknown:?}"
    );
}
