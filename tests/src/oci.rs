//! The distribution API spoken by hand, for tests that write what gantry
//! must read (fixtures of other tools' output, signatures, tampered content)
//! straight into a real registry.

use crate::{Workspace, plugin};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One HTTP/1.1 request to the registry at `addr`; (status, headers, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut all = vec![];
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, all[end..].to_vec())
}

/// Upload a blob with a POST and a PUT, as any client does.
pub fn put_blob(addr: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let (status, head, _) = http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(status, 202, "{head}");
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .unwrap()
        .trim()
        .to_string();
    let path = location
        .split_once(addr)
        .map_or(location.as_str(), |(_, p)| p);
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, head, _) = http(
        addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("content-type", "application/octet-stream")],
        bytes,
    );
    assert_eq!(status, 201, "{head}");
    digest
}

pub fn put_manifest(addr: &str, repo: &str, tag: &str, manifest: &Value) -> String {
    let bytes = serde_json::to_vec(manifest).unwrap();
    let media_type = manifest["mediaType"].as_str().unwrap();
    let (status, head, body) = http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("content-type", media_type)],
        &bytes,
    );
    assert_eq!(status, 201, "{head}{}", String::from_utf8_lossy(&body));
    sha256(&bytes)
}

/// `gantry plugins push <test plugin> oci://<addr>/<repo> --insecure`; the
/// manifest digest it printed.
pub fn push(ws: &Workspace, name: &str, reference: &str, extra: &[&str]) -> String {
    let file = plugin(name);
    let mut args = vec![
        "plugins",
        "push",
        file.to_str().unwrap(),
        reference,
        "--insecure",
    ];
    args.extend_from_slice(extra);
    let out = ws.gantry(&args);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let first = out.stdout.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{reference}@sha256:")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "component: {}",
            sha256(&std::fs::read(&file).unwrap())
        )),
        "{}",
        out.stdout
    );
    first.rsplit_once('@').unwrap().1.to_string()
}

/// The file names of the components in the plugin cache under `cache`.
pub fn cached_plugins(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("plugins/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
