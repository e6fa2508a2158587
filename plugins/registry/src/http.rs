//! A small async HTTP client over wasi:http/outgoing-handler, on wstd's
//! reactor so that several requests (blob uploads) can be in flight at once:
//! what the OCI distribution protocol needs (methods, headers, a body, the
//! whole response).

// The request and response types are the SDK's blocking client's; only
// sending differs.
pub use gantry_sdk::http::{Error, Response};
use gantry_sdk::http::{code, request, shown_url};
use wasip2::http::outgoing_handler;
use wasip2::http::types::OutgoingBody;
use wstd::io::{AsyncInputStream, AsyncOutputStream, AsyncPollable};

async fn write_body(out: &OutgoingBody, body: &[u8], url: &str) -> Result<(), Error> {
    let shown = shown_url(url);
    if body.is_empty() {
        return Ok(());
    }
    let stream = AsyncOutputStream::new(
        out.write()
            .map_err(|()| Error::Invalid(format!("body stream of {}", shown_url(url))))?,
    );
    stream
        .write_all(body)
        .await
        .map_err(|e| Error::Transport(format!("{shown}: writing the body: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| Error::Transport(format!("{shown}: flushing the body: {e}")))
}

/// Send one request and read the whole response.
pub async fn send(
    verb: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Response, Error> {
    let shown = shown_url(url);
    let (req, out_body) = request(verb, url, headers, body.len())?;
    let future = outgoing_handler::handle(req, None).map_err(|e| code(&e, url))?;
    // A refused request (not granted, connection refused) shows up as a closed
    // body stream first; the response future then says why, so it takes precedence.
    let written = write_body(&out_body, body, url).await;
    let finished = OutgoingBody::finish(out_body, None).map_err(|e| code(&e, url));
    AsyncPollable::new(future.subscribe()).wait_for().await;
    let response = future
        .get()
        .ok_or_else(|| Error::Transport(format!("{shown}: no response")))?
        .map_err(|()| Error::Transport(format!("{shown}: response taken twice")))?
        .map_err(|e| code(&e, url))?;
    // The server answered: its status says more than a body it stopped reading.
    let _ = (written, finished);
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let mut bytes = vec![];
    if verb != "HEAD" {
        let incoming = response
            .consume()
            .map_err(|()| Error::Transport(format!("{shown}: no body")))?;
        let stream = AsyncInputStream::new(
            incoming
                .stream()
                .map_err(|()| Error::Transport(format!("{shown}: no body stream")))?,
        );
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => {
                    return Err(Error::Transport(format!(
                        "{shown}: reading the response: {e}"
                    )));
                }
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}
