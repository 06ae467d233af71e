//! The page, its script and its style sheet, compiled into the binary: the console needs no
//! network beyond the appliance itself. Nothing is inline, so the Content-Security-Policy
//! allows only these files.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

fn typed(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The one page every view of the console is drawn in.
pub fn page() -> Response {
    typed(PAGE, "text/html; charset=utf-8")
}

/// An asset by its file name.
pub fn asset(name: &str) -> Option<Response> {
    match name {
        "console.js" => Some(typed(SCRIPT, "text/javascript; charset=utf-8")),
        "console.css" => Some(typed(STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}
