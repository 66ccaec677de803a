//! The browser demo page: a small chat client for trying framegate from a browser.
//!
//! The page is one self-contained HTML file (`index.html`: inline CSS and JavaScript, no
//! external resources). The server serves it at `GET /` on the public port when the demo is
//! switched on, using [`render_index`] to fill in the configured WebSocket path. The page
//! connects to `ws://` or `wss://` on its own host and that path. A query parameter
//! `?server=ws://HOST:PORT/PATH` overrides the URL only when `HOST` is the page's own host
//! name, so a link cannot make the page send a token to another host. The browser test in
//! `tests/browser/` uses the override to reach a test server on another port.
//!
//! The module is pure: it contains the page and rewrites one attribute. Serving the page is
//! the runtime's job.
#![forbid(unsafe_code)]

/// The page as shipped, with the default WebSocket path `/ws`.
pub const INDEX_HTML: &str = include_str!("index.html");

/// `Content-Type` of the page.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// `Content-Security-Policy` to send with the page. It allows only the page's own inline
/// script and style (by SHA-256 hash) and WebSocket connections to the page's own origin,
/// so the `?server=` override cannot reach another port either.
///
/// The hashes cover the exact text between `<script>` and `</script>` and between `<style>`
/// and `</style>` in `index.html`. `tests/browser/` checks them and prints the new values
/// when the page changes; [`render_index`] leaves both elements untouched.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'sha256-uFEbfujs0Ipxi+DQcJH85nKTUwsgKAQv0oArkkKAx4o='; \
     style-src 'sha256-+sBGFKICiJcTELfGNrS34P9o89i+geFiKn6aSTsrPIg='; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The `framegate-path` meta element exactly as `index.html` ships it.
const PATH_META: &str = r#"<meta name="framegate-path" content="/ws">"#;

/// Returns the page with `path` as the WebSocket path it connects to. `path` is
/// HTML-escaped, so any string is safe; the server passes its configured upgrade path.
pub fn render_index(path: &str) -> String {
    let mut meta = String::with_capacity(PATH_META.len() + path.len());
    meta.push_str(r#"<meta name="framegate-path" content=""#);
    escape_attribute(path, &mut meta);
    meta.push_str(r#"">"#);
    INDEX_HTML.replacen(PATH_META, &meta, 1)
}

/// Escapes `value` for a double-quoted HTML attribute.
fn escape_attribute(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_html_ships_default_path_meta_once() {
        assert_eq!(INDEX_HTML.matches(PATH_META).count(), 1);
    }

    #[test]
    fn render_index_sets_configured_path() {
        let page = render_index("/chat/v1");
        assert!(page.contains(r#"<meta name="framegate-path" content="/chat/v1">"#));
        assert!(!page.contains(PATH_META));
        assert_eq!(
            page.len(),
            INDEX_HTML.len() + "/chat/v1".len() - "/ws".len()
        );
    }

    #[test]
    fn render_index_escapes_path() {
        let page = render_index(r#"/a"><script>alert(1)</script>&'"#);
        assert!(
            page.contains(
                r#"content="/a&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;&#39;">"#
            )
        );
        assert_eq!(page.matches("<script>").count(), 1);
    }

    #[test]
    fn index_html_is_small_and_self_contained() {
        assert!(INDEX_HTML.len() < 15 * 1024, "{} bytes", INDEX_HTML.len());
        for external in ["src=", "href=", "http://", "https://", "@import", "url("] {
            assert!(
                !INDEX_HTML.contains(external),
                "page references {external:?}"
            );
        }
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert_eq!(INDEX_HTML.matches("<style").count(), 1);
        assert!(
            !INDEX_HTML.contains(" style="),
            "inline style attributes break the CSP"
        );
    }

    #[test]
    fn index_html_has_stable_element_ids() {
        for id in [
            "token",
            "mode-query",
            "mode-protocol",
            "connect",
            "disconnect",
            "status",
            "server",
            "to",
            "text",
            "send",
            "log",
        ] {
            let attribute = format!(r#"id="{id}""#);
            assert_eq!(INDEX_HTML.matches(&attribute).count(), 1, "#{id}");
        }
    }

    #[test]
    fn content_security_policy_allows_only_own_origin() {
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
        assert!(CONTENT_SECURITY_POLICY.contains("connect-src 'self'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert_eq!(CONTENT_SECURITY_POLICY.matches("'sha256-").count(), 2);
    }
}
