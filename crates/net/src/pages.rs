//! The pages the node serves itself: the operator's desktop at `/`
//! (`assets/desk/`: one HTML page, its script and its style sheet) and
//! the supervisors' wallboard at `/wallboard` (`assets/wall/`), compiled
//! into the binary: nothing to install, nothing fetched from elsewhere. Each answer carries a Content-Security-Policy that lets the
//! page load only the node's own script and style and talk only to the
//! node (no inline script, no other origin, never framed).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../assets/desk/index.html");
const SCRIPT: &str = include_str!("../assets/desk/desk.js");
const STYLE: &str = include_str!("../assets/desk/desk.css");
const COMMON: &str = include_str!("../assets/desk/common.js");
const WALL: &str = include_str!("../assets/wall/index.html");
const WALL_SCRIPT: &str = include_str!("../assets/wall/wallboard.js");

/// What the pages may load and where they may connect: the node only.
pub(crate) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The desktop's routes.
pub(crate) fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/desk.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/common.js",
            get(|| async { page(COMMON, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/desk.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/wallboard",
            get(|| async { page(WALL, "text/html; charset=utf-8") }),
        )
        .route(
            "/wallboard.js",
            get(|| async { page(WALL_SCRIPT, "text/javascript; charset=utf-8") }),
        )
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    // Never kept (nor in the back/forward cache of a shared computer).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets_and_writes_no_markup_from_data() {
        // Every asset the page names is one this module serves.
        for asset in ["/common.js", "/desk.js", "/desk.css"] {
            assert!(INDEX.contains(asset), "{asset}");
        }
        for asset in ["/common.js", "/wallboard.js", "/desk.css"] {
            assert!(WALL.contains(asset), "{asset}");
        }
        // No inline script or handler (the CSP would refuse them), no
        // markup built from strings (IVR answers are a caller's input).
        for html in [INDEX, WALL] {
            assert!(!html.contains("<script>") && !html.contains(" onclick="));
        }
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "DOMParser",
            "createContextualFragment",
            "srcdoc",
            "eval(",
            "new Function",
            "document.write",
            "setAttribute(\"on",
            "localStorage.setItem(\"centralino.session",
        ] {
            assert!(
                !SCRIPT.contains(sink) && !WALL_SCRIPT.contains(sink),
                "{sink}"
            );
        }
        assert!(PAGE_CSP.contains("script-src 'self'") && !PAGE_CSP.contains("unsafe"));
    }
}
