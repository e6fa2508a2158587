//! A tiny HTTP service: `GET /` answers a greeting, `GET /healthz` answers `ok`.
//! No dependencies, so it builds anywhere (and later as a static binary in a
//! FROM-scratch image).
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// The response body for a request path.
pub fn respond(path: &str) -> (u16, String) {
    match path {
        "/" => (200, format!("hello from gantry's example app v{}\n", env!("CARGO_PKG_VERSION"))),
        "/healthz" => (200, "ok\n".into()),
        _ => (404, "not found\n".into()),
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("listening on {addr}");
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = respond(path);
        write!(stream, "HTTP/1.1 {status} OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::respond;

    #[test]
    fn greets() {
        let (status, body) = respond("/");
        assert_eq!(status, 200);
        assert!(body.starts_with("hello from gantry"));
    }

    #[test]
    fn health() {
        assert_eq!(respond("/healthz"), (200, "ok\n".to_string()));
    }

    #[test]
    fn unknown_paths_are_404() {
        assert_eq!(respond("/nope").0, 404);
    }
}
