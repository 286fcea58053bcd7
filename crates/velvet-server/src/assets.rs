//! The console's static files, embedded in the binary and served under content-hashed names
//! (`console.3f2a9c1e.js`) with immutable caching: a new build changes the name, so a browser
//! never runs a stale script. `/console/assets/manifest.json` lists every file and its SHA-256.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Every file: its name in `assets/`, its bytes and its content type.
const FILES: &[(&str, &[u8], &str)] = &[
    (
        "console.css",
        include_bytes!("../assets/console.css"),
        "text/css; charset=utf-8",
    ),
    (
        "console.js",
        include_bytes!("../assets/console.js"),
        "text/javascript; charset=utf-8",
    ),
];

#[derive(Debug)]
pub(crate) struct Asset {
    pub name: &'static str,
    /// `/console/assets/{stem}.{hash8}.{ext}`.
    pub path: String,
    pub sha256: String,
    bytes: &'static [u8],
    content_type: &'static str,
}

pub(crate) fn all() -> &'static [Asset] {
    static ALL: OnceLock<Vec<Asset>> = OnceLock::new();
    ALL.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, bytes, content_type)| {
                let sha256 = hex::encode(Sha256::digest(bytes));
                let (stem, ext) = name.rsplit_once('.').expect("asset names have extensions");
                Asset {
                    name,
                    path: format!("/console/assets/{stem}.{}.{ext}", &sha256[..8]),
                    sha256,
                    bytes,
                    content_type,
                }
            })
            .collect()
    })
}

/// The hashed path of the asset called `name`.
pub(crate) fn path(name: &str) -> &'static str {
    &all()
        .iter()
        .find(|a| a.name == name)
        .expect("a known asset")
        .path
}

pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    let wanted = format!("/console/assets/{file}");
    match all().iter().find(|a| a.path == wanted) {
        Some(a) => (
            [
                (CONTENT_TYPE, a.content_type),
                (CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

pub(crate) async fn manifest() -> Response {
    let files: Vec<_> = all()
        .iter()
        .map(|a| serde_json::json!({"name": a.name, "path": a.path, "sha256": a.sha256}))
        .collect();
    (
        [(CACHE_CONTROL, "no-cache")],
        axum::Json(serde_json::json!({"files": files})),
    )
        .into_response()
}
