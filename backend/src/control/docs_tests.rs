//! docs/api.md against the router: every route `route()` matches is documented.

/// The routes of route.rs's match, as `METHOD /v1/path` with docs/api.md's placeholders.
fn routes() -> Vec<String> {
    let src = include_str!("route.rs");
    let ops: Vec<&str> = src
        .lines()
        .filter(|l| l.contains("=> MirrorOp::"))
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        .collect();
    let mut out = Vec::new();
    for line in src.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("(\"") else {
            continue;
        };
        let Some((method, rest)) = rest.split_once("\", [") else {
            continue;
        };
        let Some((parts, _)) = rest.split_once("])") else {
            continue;
        };
        let mut paths = vec![String::from("/v1")];
        for part in parts.split(',').map(str::trim) {
            let names: Vec<String> = match part {
                "d" => vec!["{disk}".into()],
                "s" => vec!["{name}".into()],
                "n" => vec!["{n}".into()],
                "op" => ops.iter().map(|o| o.to_string()).collect(),
                literal => vec![literal.trim_matches('"').to_string()],
            };
            paths = paths
                .iter()
                .flat_map(|p| names.iter().map(move |n| format!("{p}/{n}")))
                .collect();
        }
        out.extend(paths.into_iter().map(|p| format!("{method} {p}")));
    }
    out
}

#[test]
fn every_route_is_in_the_api_doc() {
    let doc = include_str!("../../../docs/api.md");
    let routes = routes();
    assert!(routes.len() >= 17, "{routes:?}");
    assert!(routes.contains(&"POST /v1/disks/{disk}/mirror/{n}/replace".to_string()));
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| !doc.contains(r.as_str()))
        .collect();
    assert!(missing.is_empty(), "docs/api.md lacks {missing:?}");
}
