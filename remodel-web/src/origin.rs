//! The WebSocket handshake's origin check, against cross-site WebSocket hijacking: a page of
//! another site may open a WebSocket to us, and the browser sends our cookies with it, so a
//! handshake is accepted only from the pages the app serves (or origins it allows).

use axum::http::header::{HOST, ORIGIN};
use axum::http::HeaderMap;

/// Whether a handshake with `headers` may proceed. With no `Origin` header (not a browser:
/// nothing a cross-site page can cause) it may. Otherwise the origin must be one of `allowed`
/// (`scheme://host[:port]`), or, with none declared, name the host the request was sent to.
///
/// Public as [`crate::same_origin`], for an app's own checks of its form posts.
pub fn allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
    }
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_only_unless_declared() {
        assert!(allowed(&headers(None, "a.test"), &[]));
        assert!(allowed(
            &headers(Some("http://a.test:8080"), "a.test:8080"),
            &[]
        ));
        assert!(allowed(&headers(Some("https://A.test"), "a.test"), &[]));
        assert!(!allowed(&headers(Some("http://evil.test"), "a.test"), &[]));
        assert!(!allowed(
            &headers(Some("http://a.test.evil.test"), "a.test"),
            &[]
        ));
        assert!(!allowed(&headers(Some("null"), "a.test"), &[]));
        assert!(!allowed(&headers(Some("ftp://a.test"), "a.test"), &[]));
        let declared = ["https://app.test".to_string()];
        assert!(allowed(
            &headers(Some("https://app.test"), "api.test"),
            &declared
        ));
        assert!(!allowed(
            &headers(Some("https://api.test"), "api.test"),
            &declared
        ));
    }
}
