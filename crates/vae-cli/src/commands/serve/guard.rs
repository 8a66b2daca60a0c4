//! Who `vae serve` answers: requests addressed to it (`Host` is the bound address, so a page
//! that rebinds its own name to 127.0.0.1 is refused), from its own page (no foreign `Origin`,
//! no cross-site fetch), and, when it listens off loopback, only with its token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// What [`check`] lets through.
#[derive(Debug)]
pub struct Guard {
    /// The `Host` values accepted (lower case), or `None` on an unspecified address
    /// (0.0.0.0, ::), where the machine's names are not known and the token guards instead.
    hosts: Option<Vec<String>>,
    /// The access token off loopback.
    token: Option<String>,
    /// The cookie that keeps the token for the page (named by port: cookies ignore ports).
    cookie: String,
}

impl Guard {
    /// The guard of a server bound to `addr`, with `token` required when given.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        let port = addr.port();
        let with_port = |host: &str| {
            let mut v = vec![format!("{host}:{port}")];
            if port == 80 {
                v.push(host.to_string());
            }
            v
        };
        let ip = addr.ip();
        let hosts = if ip.is_unspecified() {
            None
        } else if ip.is_loopback() {
            Some(
                ["127.0.0.1", "localhost", "[::1]"]
                    .iter()
                    .flat_map(|h| with_port(h))
                    .collect(),
            )
        } else {
            let host = match ip {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            };
            Some(with_port(&host))
        };
        Self {
            hosts,
            token,
            cookie: format!("vae_serve_token_{port}"),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        match &self.hosts {
            None => true,
            Some(hosts) => hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
        }
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError(status, message.into()).into_response()
}

/// Equal strings, compared in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The token a request carries: in the query (`?token=`), the cookie, or `Authorization:
/// Bearer`. The second value says whether it came in the query (then the answer sets the
/// cookie, so the page's own requests carry it).
fn presented_token<'a>(req: &'a Request, cookie: &str) -> Option<(&'a str, bool)> {
    let query = req.uri().query().unwrap_or("");
    if let Some(t) = query.split('&').find_map(|kv| kv.strip_prefix("token=")) {
        return Some((t, true));
    }
    let headers: &HeaderMap = req.headers();
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(cookie)?.strip_prefix('='));
    if let Some(t) = from_cookie {
        return Some((t, false));
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| (t.trim(), false))
}

/// The middleware: refuses what is not addressed to this server, or not from its page, or
/// (off loopback) without its token.
pub async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let Some(host) = host else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the request has no Host header: vae serve answers HTTP/1.1 requests to its own address",
        );
    };
    let authority_ok = req
        .uri()
        .authority()
        .is_none_or(|a| g.host_allowed(a.as_str()));
    if !g.host_allowed(&host) || !authority_ok {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer requests for host {host:?}: open it at the address it printed"
            ),
        );
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let own = format!("http://{host}");
        if !origin.to_str().is_ok_and(|o| o.eq_ignore_ascii_case(&own)) {
            return refuse(
                StatusCode::FORBIDDEN,
                "requests from other origins are refused: vae serve answers its own page only",
            );
        }
    }
    // Browsers say where a request comes from; another site may link to the page
    // (a navigation) but not load its pictures or data.
    let site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    let navigation = req
        .headers()
        .get("sec-fetch-mode")
        .is_some_and(|m| m == "navigate");
    if matches!(site, Some("cross-site" | "same-site")) && !navigation {
        return refuse(
            StatusCode::FORBIDDEN,
            "requests from other sites are refused: vae serve answers its own page only",
        );
    }
    let mut set_cookie = None;
    if let Some(token) = &g.token {
        match presented_token(&req, &g.cookie) {
            Some((t, from_query)) if same_secret(t, token) => {
                if from_query {
                    set_cookie = HeaderValue::from_str(&format!(
                        "{}={token}; Path=/; HttpOnly; SameSite=Strict",
                        g.cookie
                    ))
                    .ok();
                }
            }
            _ => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "this server needs its access token: open the URL it printed (with ?token=…)",
                );
            }
        }
    }
    let mut response = next.run(req).await;
    if let Some(cookie) = set_cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_the_bound_address() {
        let local = Guard::new("127.0.0.1:8080".parse().unwrap(), None);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
        ] {
            assert!(local.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1:8081",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(!local.host_allowed(bad), "{bad}");
        }
        let lan = Guard::new("192.168.1.5:80".parse().unwrap(), Some("t".into()));
        assert!(lan.host_allowed("192.168.1.5") && lan.host_allowed("192.168.1.5:80"));
        assert!(!lan.host_allowed("localhost:80"));
        let any = Guard::new("0.0.0.0:9000".parse().unwrap(), Some("t".into()));
        assert!(any.host_allowed("my-box:9000"));
        assert!(
            same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("ab", "abc")
        );
    }
}
