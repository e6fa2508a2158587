//! Registry authentication for the tests: htpasswd entries for Basic auth,
//! and a token service for docker-registry's `auth: token` (the
//! `WWW-Authenticate: Bearer` flow, with ACR's AAD exchange).

use crate::Registry;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// An htpasswd line with a bcrypt hash (cost 4), as docker-registry reads it.
pub fn htpasswd(user: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 4).unwrap();
    format!("{user}:{hash}\n")
}

/// A registry token service, as docker-registry's `auth: token` expects, at
/// ACR's paths: checks basic credentials (`GET /oauth2/token`), implements ACR's
/// AAD exchange (`POST /oauth2/exchange`, form fields as documented) and the
/// refresh-token grant (`POST /oauth2/token`); issues ES256 JWTs carrying the
/// requested access, signed with a key whose self-signed certificate the
/// registry trusts (x5c header).
pub struct TokenServer {
    pub realm: String,
    /// Request lines, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// The form of each POST: (path, fields in order).
    pub forms: Arc<Mutex<Vec<Form>>>,
}

/// A POST's path and its form fields in order.
pub type Form = (String, Vec<(String, String)>);

/// What the token server accepts.
pub struct Accepts {
    pub user: &'static str,
    pub password: &'static str,
    /// The AAD access token and tenant the exchange accepts.
    pub aad_token: &'static str,
    pub tenant: &'static str,
    /// A refresh token accepted besides the ones the exchange issues.
    pub refresh_token: &'static str,
}

pub const ACCEPTS: Accepts = Accepts {
    user: "ci",
    password: "tok-pass",
    aad_token: "aad-eyJ0eXAiOiJKV1Qi.test",
    tenant: "72f988bf-0000-0000-0000-2d7cd011db47",
    refresh_token: "static-refresh-token",
};

/// Read one HTTP/1.1 request: its head and its body (by content-length).
fn read_request(stream: &mut std::net::TcpStream) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut buf = vec![];
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    (head, body)
}

fn token_server(dir: &std::path::Path) -> TokenServer {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::DecodePrivateKey as _;
    use std::io::Write;
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=gantry-test-token",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(
        &std::fs::read_to_string(dir.join("key.pem")).unwrap(),
    )
    .unwrap();
    let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let forms = Arc::new(Mutex::new(Vec::new()));
    let (log, form_log) = (requests.clone(), forms.clone());
    std::thread::spawn(move || {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", ACCEPTS.user, ACCEPTS.password))
        );
        let mut issued: Vec<String> = vec![ACCEPTS.refresh_token.to_string()];
        let reply = |stream: &mut std::net::TcpStream, status: &str, body: String| {
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        };
        let unauthorized = |why: &str| {
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": why}]}).to_string()
        };
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let (head, body) = read_request(&mut stream);
            let line = head.lines().next().unwrap_or("").to_string();
            log.lock().unwrap().push(line.clone());
            let path = line.split(' ').nth(1).unwrap_or("");
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if line.starts_with("POST ") {
                let content_type = head.lines().any(|l| {
                    l.eq_ignore_ascii_case("content-type: application/x-www-form-urlencoded")
                });
                form_log
                    .lock()
                    .unwrap()
                    .push((path.to_string(), form.clone()));
                if !content_type {
                    reply(
                        &mut stream,
                        "400 Bad Request",
                        unauthorized("form expected"),
                    );
                    continue;
                }
            }
            let scopes: Vec<String> = match (line.starts_with("GET "), path) {
                (true, "/oauth2/token") => {
                    let authorized = head.lines().any(|l| {
                        l.to_ascii_lowercase().starts_with("authorization:")
                            && l[14..].trim() == expected
                    });
                    if !authorized {
                        reply(
                            &mut stream,
                            "401 Unauthorized",
                            unauthorized("bad credentials"),
                        );
                        continue;
                    }
                    form_urlencoded::parse(query.as_bytes())
                        .filter(|(k, _)| k == "scope")
                        .map(|(_, v)| v.into_owned())
                        .collect()
                }
                (false, "/oauth2/exchange") => {
                    // ACR: grant_type=access_token, service, tenant, access_token.
                    let ok = field("grant_type") == Some("access_token")
                        && field("service") == Some("gantry-registry")
                        && field("tenant") == Some(ACCEPTS.tenant)
                        && field("access_token") == Some(ACCEPTS.aad_token);
                    if !ok {
                        reply(
                            &mut stream,
                            "401 Unauthorized",
                            unauthorized("invalid AAD access token"),
                        );
                        continue;
                    }
                    let refresh = format!("refresh-{}", issued.len());
                    issued.push(refresh.clone());
                    reply(
                        &mut stream,
                        "200 OK",
                        serde_json::json!({"refresh_token": refresh}).to_string(),
                    );
                    continue;
                }
                (false, "/oauth2/token") => {
                    let ok = field("grant_type") == Some("refresh_token")
                        && field("service") == Some("gantry-registry")
                        && field("refresh_token").is_some_and(|r| issued.iter().any(|i| i == r));
                    if !ok {
                        reply(
                            &mut stream,
                            "401 Unauthorized",
                            unauthorized("invalid refresh token"),
                        );
                        continue;
                    }
                    form.iter()
                        .filter(|(k, _)| k == "scope")
                        .map(|(_, v)| v.clone())
                        .collect()
                }
                _ => {
                    reply(
                        &mut stream,
                        "404 Not Found",
                        unauthorized("no such endpoint"),
                    );
                    continue;
                }
            };
            let access: Vec<serde_json::Value> = scopes
                .iter()
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [der_b64]});
            let claims = serde_json::json!({
                "iss": "gantry-test", "sub": ACCEPTS.user, "aud": "gantry-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", log.lock().unwrap().len()),
                "access": access,
            });
            let input = format!(
                "{}.{}",
                b64.encode(header.to_string()),
                b64.encode(claims.to_string())
            );
            let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
            let jwt = format!("{input}.{}", b64.encode(sig.to_bytes()));
            // The distribution spec's GET answers `token`; OAuth2's POST `access_token`.
            let body = if line.starts_with("GET ") {
                serde_json::json!({"token": jwt, "expires_in": 300})
            } else {
                serde_json::json!({"access_token": jwt, "expires_in": 300})
            };
            reply(&mut stream, "200 OK", body.to_string());
        }
    });
    TokenServer {
        realm,
        requests,
        forms,
    }
}

impl TokenServer {
    /// A token server and a docker-registry with `auth: token` trusting it
    /// (service `gantry-registry`, issuer `gantry-test`).
    pub fn with_registry() -> (TokenServer, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let tokens = token_server(dir.path());
        let auth = format!(
            "auth:\n  token:\n    realm: {}\n    service: gantry-registry\n    issuer: gantry-test\n    rootcertbundle: {}\n",
            tokens.realm,
            dir.path().join("cert.pem").display()
        );
        let registry = Registry::start_in(dir, &auth);
        (tokens, registry)
    }
}
