//! Maps HTTP method + path + body to a typed [`ApiCall`]: the API's whole surface in one place.

use super::ApiError;
use crate::store::diff::{EMPTY, RUNNING};
use keel_protocol::control::{
    API_PREFIX, ApplyDiff, CloneDisk, CreateSnapshot, LimitsUpdate, MirrorOpBody, ResizeDisk,
    RevertSnapshot,
};
use serde::de::DeserializeOwned;

/// A mirror component operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorOp {
    Offline,
    Online,
    /// Take the component down for service; a delta component at `delta` (or a chosen path)
    /// takes its writes meanwhile.
    Maintenance {
        delta: Option<String>,
    },
    /// Copy the whole disk onto a new component at `path`.
    Replace {
        path: String,
    },
}

/// One control request, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiCall {
    Version,
    ListDisks,
    DiskInfo {
        disk: String,
    },
    DiskStats {
        disk: String,
    },
    ListSnapshots {
        disk: String,
    },
    CreateSnapshot {
        disk: String,
        name: String,
    },
    DeleteSnapshot {
        disk: String,
        name: String,
    },
    RevertSnapshot {
        disk: String,
        name: String,
        force: bool,
    },
    Clone {
        disk: String,
        snapshot: String,
        new_disk: String,
    },
    Resize {
        disk: String,
        size: u64,
    },
    /// The changed extents between two snapshots (or a snapshot and the running point).
    Diff {
        disk: String,
        from: String,
        to: String,
    },
    /// The same, with the data, as an export file (a binary answer).
    Export {
        disk: String,
        from: String,
        to: String,
    },
    /// Replays export file `file` (a path on keeld's host) onto the disk.
    Apply {
        disk: String,
        file: String,
        force: bool,
    },
    MirrorStatus {
        disk: String,
    },
    /// Starts serving a disk described like a `[[disk]]` table (a JSON object).
    AddDisk {
        table: serde_json::Value,
    },
    /// Stops serving a disk; `force` detaches an attached frontend first.
    RemoveDisk {
        disk: String,
        force: bool,
    },
    GetLimits {
        disk: String,
    },
    SetLimits {
        disk: String,
        update: LimitsUpdate,
    },
    Mirror {
        disk: String,
        component: usize,
        op: MirrorOp,
    },
}

/// Parses a request. `method` is upper case; `url` may carry a query string, which only the
/// diff and export calls read.
pub fn route(method: &str, url: &str, body: &[u8]) -> Result<ApiCall, ApiError> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let rest = path
        .strip_prefix(API_PREFIX)
        .ok_or_else(|| not_found(method, path))?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let own = |s: &str| s.to_string();
    let call = match (method, parts.as_slice()) {
        ("GET", ["version"]) => ApiCall::Version,
        ("GET", ["disks"]) => ApiCall::ListDisks,
        ("POST", ["disks"]) => ApiCall::AddDisk { table: json(body)? },
        ("GET", ["disks", d]) => ApiCall::DiskInfo { disk: own(d) },
        ("DELETE", ["disks", d]) => ApiCall::RemoveDisk {
            disk: own(d),
            force: force_flag(query)?,
        },
        ("GET", ["disks", d, "limits"]) => ApiCall::GetLimits { disk: own(d) },
        ("PUT", ["disks", d, "limits"]) => ApiCall::SetLimits {
            disk: own(d),
            update: json(body)?,
        },
        ("GET", ["disks", d, "stats"]) => ApiCall::DiskStats { disk: own(d) },
        ("GET", ["disks", d, "snapshots"]) => ApiCall::ListSnapshots { disk: own(d) },
        ("POST", ["disks", d, "snapshots"]) => {
            let b: CreateSnapshot = json(body)?;
            check_name("snapshot", &b.name)?;
            ApiCall::CreateSnapshot {
                disk: own(d),
                name: b.name,
            }
        }
        ("DELETE", ["disks", d, "snapshots", s]) => ApiCall::DeleteSnapshot {
            disk: own(d),
            name: own(s),
        },
        ("POST", ["disks", d, "snapshots", s, "revert"]) => {
            let b: RevertSnapshot = if body.is_empty() {
                RevertSnapshot::default()
            } else {
                json(body)?
            };
            ApiCall::RevertSnapshot {
                disk: own(d),
                name: own(s),
                force: b.force,
            }
        }
        ("POST", ["disks", d, "clone"]) => {
            let b: CloneDisk = json(body)?;
            check_name("disk", &b.new_disk)?;
            ApiCall::Clone {
                disk: own(d),
                snapshot: b.snapshot,
                new_disk: b.new_disk,
            }
        }
        ("POST", ["disks", d, "resize"]) => {
            let b: ResizeDisk = json(body)?;
            ApiCall::Resize {
                disk: own(d),
                size: b.size,
            }
        }
        ("GET", ["disks", d, "diff"]) => {
            let (from, to) = diff_sides(query)?;
            ApiCall::Diff {
                disk: own(d),
                from,
                to,
            }
        }
        ("GET", ["disks", d, "export"]) => {
            let (from, to) = diff_sides(query)?;
            ApiCall::Export {
                disk: own(d),
                from,
                to,
            }
        }
        ("POST", ["disks", d, "apply"]) => {
            let b: ApplyDiff = json(body)?;
            if !b.file.starts_with('/') {
                return Err(ApiError::BadRequest(format!(
                    "\"file\" must be an absolute path on keeld's host, not {:?}",
                    b.file
                )));
            }
            ApiCall::Apply {
                disk: own(d),
                file: b.file,
                force: b.force,
            }
        }
        ("GET", ["disks", d, "mirror"]) => ApiCall::MirrorStatus { disk: own(d) },
        ("POST", ["disks", d, "mirror", n, op]) => {
            let component = n.parse::<usize>().map_err(|_| {
                ApiError::BadRequest(format!("mirror component must be a number, not {n:?}"))
            })?;
            let b: MirrorOpBody = if body.is_empty() {
                MirrorOpBody::default()
            } else {
                json(body)?
            };
            let op = match *op {
                "offline" => MirrorOp::Offline,
                "online" => MirrorOp::Online,
                "maintenance" => MirrorOp::Maintenance { delta: b.path },
                "replace" => MirrorOp::Replace {
                    path: b.path.ok_or_else(|| {
                        ApiError::BadRequest(
                            "replace needs a \"path\" for the new component".into(),
                        )
                    })?,
                },
                other => return Err(not_found(method, &format!("mirror op {other}"))),
            };
            ApiCall::Mirror {
                disk: own(d),
                component,
                op,
            }
        }
        _ => return Err(not_found(method, path)),
    };
    Ok(call)
}

/// `?force=true` (or `false`) of a disk removal; nothing else.
fn force_flag(query: &str) -> Result<bool, ApiError> {
    match query {
        "" | "force=false" => Ok(false),
        "force=true" => Ok(true),
        other => Err(ApiError::BadRequest(format!(
            "unknown query {other:?} (use force=true)"
        ))),
    }
}

/// `from` (required) and `to` (default: the running point) of a diff query.
fn diff_sides(query: &str) -> Result<(String, String), ApiError> {
    let (mut from, mut to) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)?;
        match k {
            "from" => from = Some(v),
            "to" => to = Some(v),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?} (use from and to)"
                )));
            }
        }
    }
    let from = from.ok_or_else(|| {
        ApiError::BadRequest("a diff needs ?from=SNAPSHOT (and optionally &to=SNAPSHOT)".into())
    })?;
    let to = to.unwrap_or_else(|| RUNNING.to_string());
    for side in [&from, &to] {
        if side != RUNNING && side != EMPTY {
            check_name("snapshot", side)?;
        }
    }
    Ok((from, to))
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value.
fn percent_decode(v: &str) -> Result<String, ApiError> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::BadRequest(format!("bad escape in {v:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest(format!("{v:?} is not UTF-8")))
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))
}

fn not_found(method: &str, path: &str) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {method} {path}"))
}

/// Longest snapshot name: what a keel container stores (longer ones would be cut and collide).
const SNAPSHOT_NAME_MAX: usize = 31;

/// Names end up in paths and on disk: keep them to a safe alphabet.
fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let max = if what == "snapshot" {
        SNAPSHOT_NAME_MAX
    } else {
        64
    };
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} name {name:?} must be 1-{max} characters of A-Z a-z 0-9 - _ . and not start with '.'"
        )))
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn snapshot_names_fit_the_container() {
        assert!(check_name("snapshot", &"a".repeat(31)).is_ok());
        let e = check_name("snapshot", &"a".repeat(32)).unwrap_err();
        assert!(format!("{e:?}").contains("1-31 characters"), "{e:?}");
        assert!(check_name("disk", &"a".repeat(64)).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(route("GET", "/v1/version", b""), Ok(ApiCall::Version));
        assert_eq!(route("GET", "/v1/disks?x=1", b""), Ok(ApiCall::ListDisks));
        assert_eq!(
            route("GET", "/v1/disks/vm1/stats", b""),
            Ok(ApiCall::DiskStats { disk: "vm1".into() })
        );
        assert_eq!(
            route("POST", "/v1/disks/vm1/snapshots", br#"{"name":"s1"}"#),
            Ok(ApiCall::CreateSnapshot {
                disk: "vm1".into(),
                name: "s1".into()
            })
        );
        assert_eq!(
            route("POST", "/v1/disks/vm1/snapshots/s1/revert", b""),
            Ok(ApiCall::RevertSnapshot {
                disk: "vm1".into(),
                name: "s1".into(),
                force: false
            })
        );
        assert_eq!(
            route("DELETE", "/v1/disks/vm1/snapshots/s1", b""),
            Ok(ApiCall::DeleteSnapshot {
                disk: "vm1".into(),
                name: "s1".into()
            })
        );
        assert_eq!(
            route(
                "POST",
                "/v1/disks/vm1/clone",
                br#"{"snapshot":"s1","new_disk":"vm2"}"#
            ),
            Ok(ApiCall::Clone {
                disk: "vm1".into(),
                snapshot: "s1".into(),
                new_disk: "vm2".into()
            })
        );
        assert_eq!(
            route("POST", "/v1/disks/vm1/resize", br#"{"size":4096}"#),
            Ok(ApiCall::Resize {
                disk: "vm1".into(),
                size: 4096
            })
        );
        assert_eq!(
            route("GET", "/v1/disks/vm1/diff?from=s1&to=s2", b""),
            Ok(ApiCall::Diff {
                disk: "vm1".into(),
                from: "s1".into(),
                to: "s2".into()
            })
        );
        assert_eq!(
            route("GET", "/v1/disks/vm1/export?from=%40empty", b""),
            Ok(ApiCall::Export {
                disk: "vm1".into(),
                from: "@empty".into(),
                to: "@running".into()
            })
        );
        assert_eq!(
            route("POST", "/v1/disks/vm1/apply", br#"{"file":"/b/t.kdiff"}"#),
            Ok(ApiCall::Apply {
                disk: "vm1".into(),
                file: "/b/t.kdiff".into(),
                force: false
            })
        );
        assert!(matches!(
            route("POST", "/v1/disks/vm1/apply", br#"{"file":"t.kdiff"}"#),
            Err(ApiError::BadRequest(_))
        ));
        assert_eq!(
            route("DELETE", "/v1/disks/vm1?force=true", b""),
            Ok(ApiCall::RemoveDisk {
                disk: "vm1".into(),
                force: true
            })
        );
        assert_eq!(
            route("POST", "/v1/disks", br#"{"name":"vm2"}"#),
            Ok(ApiCall::AddDisk {
                table: serde_json::json!({"name": "vm2"})
            })
        );
        assert_eq!(
            route("PUT", "/v1/disks/vm1/limits", br#"{"iops_limit":5}"#),
            Ok(ApiCall::SetLimits {
                disk: "vm1".into(),
                update: LimitsUpdate {
                    iops_limit: Some(5),
                    ..LimitsUpdate::default()
                }
            })
        );
        assert!(matches!(
            route("PUT", "/v1/disks/vm1/limits", br#"{"iops":5}"#),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            route("DELETE", "/v1/disks/vm1?forse=1", b""),
            Err(ApiError::BadRequest(_))
        ));
        assert_eq!(
            route("POST", "/v1/disks/db/mirror/1/maintenance", b""),
            Ok(ApiCall::Mirror {
                disk: "db".into(),
                component: 1,
                op: MirrorOp::Maintenance { delta: None }
            })
        );
    }

    #[test]
    fn refuses_unknown_paths_and_methods() {
        assert!(matches!(
            route("GET", "/v2/disks", b""),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            route("PUT", "/v1/disks", b""),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            route("POST", "/v1/disks/d/mirror/0/explode", b""),
            Err(ApiError::NotFound(_))
        ));
    }

    #[test]
    fn refuses_bad_bodies_and_names() {
        assert!(matches!(
            route("POST", "/v1/disks/vm1/snapshots", b"{"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            route("POST", "/v1/disks/vm1/snapshots", br#"{"name":"../x"}"#),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            route("POST", "/v1/disks/vm1/mirror/x/online", b""),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            route("POST", "/v1/disks/vm1/mirror/0/replace", b""),
            Err(ApiError::BadRequest(_))
        ));
        for q in [
            "",
            "?to=s1",
            "?from=../x",
            "?from=s1&size=3",
            "?from=%zz",
            "?from=@other",
        ] {
            assert!(
                matches!(
                    route("GET", &format!("/v1/disks/vm1/diff{q}"), b""),
                    Err(ApiError::BadRequest(_))
                ),
                "{q}"
            );
        }
    }

    #[test]
    fn refuses_unknown_body_fields_by_name() {
        let cases: [(&str, &[u8]); 5] = [
            ("/v1/disks/vm1/snapshots", br#"{"name":"s1","nmae":"x"}"#),
            ("/v1/disks/vm1/snapshots/s1/revert", br#"{"froce":true}"#),
            (
                "/v1/disks/vm1/clone",
                br#"{"snapshot":"s1","new_disk":"vm2","size":1}"#,
            ),
            ("/v1/disks/vm1/resize", br#"{"size":4096,"shrink":true}"#),
            (
                "/v1/disks/vm1/mirror/0/replace",
                br#"{"path":"/x","paht":"/y"}"#,
            ),
        ];
        for (path, body) in cases {
            let Err(ApiError::BadRequest(message)) = route("POST", path, body) else {
                panic!("{path}: unknown field accepted");
            };
            assert!(message.contains("unknown field"), "{path}: {message}");
            let field = ["nmae", "froce", "size", "shrink", "paht"];
            assert!(
                field.iter().any(|f| message.contains(&format!("`{f}`"))),
                "{path}: {message}"
            );
        }
    }
}
