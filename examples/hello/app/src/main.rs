//! A tiny HTTP service: `GET /` answers a greeting naming its version (`$APP_VERSION`,
//! else the crate's), `GET /healthz` answers `ok`. No dependencies, so it builds
//! anywhere (and later as a static binary in a FROM-scratch image).
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// The response for a request path; `version` is named in the greeting.
pub fn respond(path: &str, version: &str) -> (u16, String) {
    match path {
        "/" => (200, format!("hello from gantry's example app {version}\n")),
        "/healthz" => (200, "ok\n".into()),
        _ => (404, "not found\n".into()),
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let version = std::env::var("APP_VERSION")
        .unwrap_or_else(|_| format!("v{}", env!("CARGO_PKG_VERSION")));
    let listener = TcpListener::bind(&addr)?;
    eprintln!("listening on {addr}");
    for stream in listener.incoming() {
        // One client that hangs up early must not stop the service.
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = respond(path, &version);
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let _ = write!(stream, "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::respond;

    #[test]
    fn greets() {
        let (status, body) = respond("/", "v9");
        assert_eq!(status, 200);
        assert_eq!(body, "hello from gantry's example app v9\n");
    }

    #[test]
    fn health() {
        assert_eq!(respond("/healthz", "v9"), (200, "ok\n".to_string()));
    }

    #[test]
    fn unknown_paths_are_404() {
        assert_eq!(respond("/nope", "v9").0, 404);
    }
}
