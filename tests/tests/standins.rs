//! The Azure Boards and GitHub Issues stand-ins enforce the documented
//! protocols: driven over real HTTP on loopback by a minimal client, every
//! rule a backlog client could get wrong answers like the service.

use base64::Engine;
use gantry_e2e::boards::Boards;
use gantry_e2e::github_issues::GithubIssues;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::Duration;

/// One HTTP response.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The Azure DevOps error body's message, after checking its shape.
    fn tf_message(&self) -> String {
        let v = self.json();
        assert_eq!(v["$id"], "1", "{v}");
        assert!(v["innerException"].is_null(), "{v}");
        assert!(
            v["typeName"].as_str().is_some_and(|t| t.contains(", ")),
            "{v}"
        );
        assert!(v["typeKey"].is_string(), "{v}");
        assert_eq!(v["errorCode"], 0, "{v}");
        assert_eq!(v["eventId"], 3000, "{v}");
        v["message"].as_str().unwrap().to_string()
    }
}

/// A request over a fresh connection (`Connection: close`), as plain as can be.
fn call(url: &str, method: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the stand-in");
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = vec![];
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status: status.parse().unwrap(),
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

// ---------------------------------------------------------------- Azure Boards

const PAT: &str = "pat-secret-1234567890";

fn basic(user_and_pat: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_and_pat)
    )
}

/// A client of one stand-in, with the right credential.
struct Ado {
    base: String,
    auth: String,
}

impl Ado {
    fn new(boards: &Boards) -> Self {
        Self {
            base: format!("{}/contoso/Fabrikam", boards.url()),
            auth: basic(&format!(":{PAT}")),
        }
    }

    fn item_url(&self, id: u32, query: &str) -> String {
        format!("{}/_apis/wit/workitems/{id}?{query}", self.base)
    }

    fn get(&self, id: u32) -> Resp {
        call(
            &self.item_url(id, "$expand=Relations&api-version=7.1"),
            "GET",
            &[("authorization", &self.auth)],
            None,
        )
    }

    fn rev(&self, id: u32) -> u64 {
        let r = self.get(id);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["rev"].as_u64().unwrap()
    }

    fn patch(&self, id: u32, ops: &Value) -> Resp {
        call(
            &self.item_url(id, "api-version=7.1"),
            "PATCH",
            &[
                ("authorization", &self.auth),
                ("content-type", "application/json-patch+json"),
            ],
            Some(&ops.to_string()),
        )
    }

    /// A patch setting the state, guarded by the current rev.
    fn set_state(&self, id: u32, state: &str) -> Resp {
        let rev = self.rev(id);
        self.patch(
            id,
            &json!([
                {"op": "test", "path": "/rev", "value": rev},
                {"op": "add", "path": "/fields/System.State", "value": state},
            ]),
        )
    }

    fn comments_url(&self, id: u32, query: &str) -> String {
        format!("{}/_apis/wit/workItems/{id}/comments?{query}", self.base)
    }
}

fn boards_with_items() -> Boards {
    let boards = Boards::start(PAT);
    for id in 1..=3 {
        boards.add_item(id, "User Story", &format!("Story {id}"), "New");
    }
    boards
}

#[test]
fn boards_authentication_is_basic_with_an_empty_user_or_a_bearer_token() {
    let boards = Boards::start_with_bearer(PAT, "entra-token");
    boards.add_item(1, "User Story", "Story", "New");
    let url = Ado::new(&boards).item_url(1, "api-version=7.1");
    let get = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        call(&url, "GET", &headers, None)
    };

    let none = get(None);
    assert_eq!(none.status, 401);
    assert!(none.tf_message().starts_with("TF400813:"), "{}", none.body);
    assert!(none.header("www-authenticate").is_some());

    let wrong = get(Some(&basic(":not-the-pat")));
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // What the service answers a credential it cannot read: a sign-in page.
    for unreadable in [
        basic(&format!("me:{PAT}")),
        format!("Basic {PAT}"),
        basic(PAT),
    ] {
        let r = get(Some(&unreadable));
        assert_eq!(r.status, 203, "{unreadable}: {}", r.body);
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{:?}",
            r.headers
        );
        assert!(r.body.contains("<html>"));
    }

    assert_eq!(get(Some(&basic(&format!(":{PAT}")))).status, 200);
    assert_eq!(get(Some("Bearer entra-token")).status, 200);
    assert_eq!(get(Some("Bearer other")).status, 401);
    assert_eq!(get(Some(&format!("Bearer {PAT}"))).status, 401);

    // Every request is recorded with its status and headers.
    let statuses: Vec<u16> = boards.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 203, 203, 203, 200, 200, 401, 401]);
    assert_eq!(
        boards.requests()[0].path,
        "/contoso/Fabrikam/_apis/wit/workitems/1?api-version=7.1"
    );
    assert_eq!(
        boards.requests()[6].header("authorization"),
        Some("Bearer entra-token")
    );

    // Without start_with_bearer, no bearer token is good.
    let plain = Boards::start(PAT);
    plain.add_item(1, "User Story", "Story", "New");
    let r = call(
        &Ado::new(&plain).item_url(1, "api-version=7.1"),
        "GET",
        &[("authorization", "Bearer entra-token")],
        None,
    );
    assert_eq!(r.status, 401);
}

#[test]
fn boards_requires_a_supported_api_version() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    let get = |query: &str| {
        call(
            &ado.item_url(1, query),
            "GET",
            &[("authorization", &ado.auth)],
            None,
        )
    };
    let missing = get("");
    assert_eq!(missing.status, 400);
    assert!(missing.tf_message().contains("No api-version was supplied"));
    assert_eq!(missing.json()["typeKey"], "VssVersionNotSpecifiedException");

    let future = get("api-version=9.0");
    assert_eq!(future.status, 400);
    assert_eq!(future.json()["typeKey"], "VssVersionOutOfRangeException");

    let unreleased = get("api-version=7.2");
    assert_eq!(unreleased.status, 400);
    assert!(
        unreleased
            .tf_message()
            .contains("-preview flag must be supplied")
    );

    let garbage = get("api-version=latest");
    assert_eq!(garbage.status, 400);

    assert_eq!(get("api-version=7.1").status, 200);
    assert_eq!(get("api-version=7.2-preview.3").status, 200);
    // The version may come in the Accept header instead.
    let accept = call(
        &ado.item_url(1, ""),
        "GET",
        &[
            ("authorization", &ado.auth),
            ("accept", "application/json; api-version=7.1"),
        ],
        None,
    );
    assert_eq!(accept.status, 200, "{}", accept.body);
}

#[test]
fn boards_get_returns_the_item_and_relations_only_when_expanded() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    let r = ado.get(2);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["id"], 2);
    assert_eq!(v["rev"], 1);
    assert_eq!(v["fields"]["System.State"], "New");
    assert_eq!(v["fields"]["System.Title"], "Story 2");
    assert_eq!(v["fields"]["System.WorkItemType"], "User Story");
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .ends_with("/contoso/Fabrikam/_apis/wit/workItems/2")
    );

    let missing = ado.get(99);
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.tf_message(),
        "TF401232: Work item 99 does not exist, or you do not have permissions to read it."
    );

    let link = json!({"rel": "Hyperlink", "url": "https://example.com/run/1", "attributes": {"comment": "run 1"}});
    let r = ado.patch(
        2,
        &json!([{"op": "add", "path": "/relations/-", "value": link}]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let expanded = ado.get(2).json();
    assert_eq!(expanded["relations"], json!([link]));
    // The camel-case path works too; no $expand, no relations.
    let plain = call(
        &format!(
            "{}/contoso/Fabrikam/_apis/wit/workItems/2?api-version=7.1",
            boards.url()
        ),
        "GET",
        &[("authorization", &ado.auth)],
        None,
    );
    assert_eq!(plain.status, 200);
    assert!(plain.json().get("relations").is_none(), "{}", plain.body);
    let all = call(
        &ado.item_url(2, "$expand=all&api-version=7.1"),
        "GET",
        &[("authorization", &ado.auth)],
        None,
    );
    assert_eq!(all.json()["relations"].as_array().unwrap().len(), 1);
}

#[test]
fn boards_patch_needs_the_json_patch_media_type() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    let ops = json!([{"op": "add", "path": "/fields/System.History", "value": "deployed"}]);
    for content_type in ["application/json", "text/plain"] {
        let r = call(
            &ado.item_url(1, "api-version=7.1"),
            "PATCH",
            &[("authorization", &ado.auth), ("content-type", content_type)],
            Some(&ops.to_string()),
        );
        assert_eq!(r.status, 415, "{}", r.body);
        assert!(
            r.tf_message()
                .contains("Valid content types for this method are: application/json-patch+json"),
            "{}",
            r.body
        );
    }
    assert!(boards.patches().is_empty());
    assert_eq!(boards.item(1)["rev"], 1);
    assert!(boards.history(1).is_empty());

    // With the right type (parameters allowed) it is accepted, once.
    let r = call(
        &ado.item_url(1, "api-version=7.1"),
        "PATCH",
        &[
            ("authorization", &ado.auth),
            ("content-type", "application/json-patch+json; charset=utf-8"),
        ],
        Some(&ops.to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["rev"], 2);
    assert_eq!(r.json()["fields"]["System.History"], "deployed");
    assert_eq!(boards.patches(), vec![(1, ops)]);
    assert_eq!(boards.history(1), ["deployed"]);
}

#[test]
fn boards_patch_is_all_or_nothing() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    let bad = [
        // A state that is not in the list, after a valid history entry.
        (
            json!([
                {"op": "add", "path": "/fields/System.History", "value": "deployed"},
                {"op": "add", "path": "/fields/System.State", "value": "Done"},
            ]),
            "is not in the list of supported values",
        ),
        (
            json!([
                {"op": "add", "path": "/fields/System.History", "value": "deployed"},
                {"op": "add", "path": "/fields/Custom.Nope", "value": 1},
            ]),
            "TF51535: Cannot find field Custom.Nope.",
        ),
        (
            json!([{"op": "replace", "path": "/fields/System.Rev", "value": 7}]),
            "TF401326",
        ),
        (
            json!([{"op": "copy", "from": "/fields/System.Title", "path": "/fields/System.Description"}]),
            "'copy'",
        ),
        (json!({"op": "add"}), "valid patch document"),
        (json!([]), "valid patch document"),
        (
            json!([{"op": "add", "path": "/title", "value": "x"}]),
            "'/title'",
        ),
    ];
    for (ops, message) in bad {
        let r = ado.patch(1, &ops);
        assert_eq!(r.status, 400, "{ops}: {}", r.body);
        let m = r.tf_message();
        assert!(m.contains(message), "{ops}: {m}");
    }
    assert!(boards.patches().is_empty());
    assert!(boards.history(1).is_empty());
    let item = boards.item(1);
    assert_eq!(item["rev"], 1);
    assert_eq!(item["fields"]["System.State"], "New");
}

#[test]
fn boards_stale_rev_is_412_then_succeeds_after_a_fresh_read() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    let rev = ado.rev(3);
    assert_eq!(rev, 1);
    boards.edit_before_next_patch(3);
    let ops = |rev: u64| {
        json!([
            {"op": "test", "path": "/rev", "value": rev},
            {"op": "add", "path": "/fields/System.History", "value": "Deployed to aks"},
        ])
    };
    let stale = ado.patch(3, &ops(rev));
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert_eq!(
        stale.tf_message(),
        "TF26071: This work item has been changed by someone else since you opened it. You will need to refresh it and discard your changes."
    );
    // Someone else's edit happened; the client's did not.
    assert_eq!(boards.item(3)["rev"], 2);
    assert_eq!(
        boards.item(3)["fields"]["System.Title"],
        "Story 3 (edited elsewhere)"
    );
    assert!(boards.history(3).is_empty());
    assert!(boards.patches().is_empty());

    let fresh = ado.rev(3);
    assert_eq!(fresh, 2);
    let ok = ado.patch(3, &ops(fresh));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["rev"], 3);
    assert_eq!(boards.patches(), vec![(3, ops(2))]);
    assert_eq!(boards.history(3), ["Deployed to aks"]);
    // The cue was used up: the next patch is not preceded by another edit.
    assert_eq!(ado.patch(3, &ops(3)).status, 200);
    assert_eq!(boards.item(3)["rev"], 4);
}

#[test]
fn boards_state_follows_the_workflow() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);

    let r = ado.set_state(1, "Resolved");
    assert_eq!(r.status, 400, "{}", r.body);
    let m = r.tf_message();
    assert!(
        m.starts_with("TF401320: Rule Error for field State. Error code: InvalidListValue"),
        "{m}"
    );
    assert_eq!(boards.item(1)["fields"]["System.State"], "New");

    for (state, rev) in [("Active", 2), ("Active", 3), ("Resolved", 4), ("Closed", 5)] {
        let r = ado.set_state(1, state);
        assert_eq!(r.status, 200, "-> {state}: {}", r.body);
        assert_eq!(r.json()["rev"], rev);
        assert_eq!(r.json()["fields"]["System.State"], state);
    }
    assert_eq!(
        boards.item(1)["fields"]["System.Reason"],
        "Moved to state Closed"
    );
    assert_eq!(ado.set_state(1, "Resolved").status, 400);
    assert_eq!(ado.set_state(1, "New").status, 400);
    assert_eq!(ado.set_state(1, "Active").status, 200);

    let done = ado.set_state(2, "Done");
    assert_eq!(done.status, 400);
    assert!(
        done.tf_message()
            .contains("The field 'State' contains the value 'Done' that is not in the list of supported values"),
        "{}",
        done.body
    );
    // Any state can be removed, and a removed item comes back as New.
    assert_eq!(ado.set_state(2, "Removed").status, 200);
    assert_eq!(ado.set_state(2, "New").status, 200);
    assert_eq!(boards.patches().len(), 7);
    assert!(boards.patches().iter().all(|(id, _)| *id != 3));
}

#[test]
fn boards_links_are_validated_and_never_duplicated() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    let add = |value: Value| {
        ado.patch(
            1,
            &json!([{"op": "add", "path": "/relations/-", "value": value}]),
        )
    };
    let commit = json!({
        "rel": "ArtifactLink",
        "url": "vstfs:///Git/Commit/p%2Fr%2Fabc123",
        "attributes": {"name": "Fixed in Commit"},
    });
    assert_eq!(add(commit.clone()).status, 200);
    let dup = add(
        json!({"rel": "ArtifactLink", "url": "VSTFS:///Git/Commit/p%2Fr%2Fabc123", "attributes": {"name": "Fixed in Commit"}}),
    );
    assert_eq!(dup.status, 400, "{}", dup.body);
    assert!(dup.tf_message().starts_with("TF201035:"), "{}", dup.body);

    for (value, why) in [
        (
            json!({"rel": "Bogus", "url": "https://example.com"}),
            "TF201036",
        ),
        (
            json!({"rel": "Hyperlink", "url": "ftp://example.com"}),
            "TF201036",
        ),
        (
            json!({"rel": "ArtifactLink", "url": "https://example.com/commit/1"}),
            "TF201036",
        ),
        (
            json!({"rel": "System.LinkTypes.Related", "url": format!("{}/_apis/wit/workItems/77", ado.base)}),
            "TF201036",
        ),
        (json!({"rel": "Hyperlink"}), "`url`"),
    ] {
        let r = add(value.clone());
        assert_eq!(r.status, 400, "{value}: {}", r.body);
        assert!(r.tf_message().contains(why), "{value}: {}", r.body);
    }
    let related = json!({"rel": "System.LinkTypes.Related", "url": format!("{}/_apis/wit/workItems/2", ado.base), "attributes": {}});
    assert_eq!(add(related.clone()).status, 200);
    // A duplicate within one patch is refused too, and nothing of it stays.
    let hyper = json!({"rel": "Hyperlink", "url": "https://example.com/run/9", "attributes": {}});
    let twice = ado.patch(
        1,
        &json!([
            {"op": "add", "path": "/relations/-", "value": hyper},
            {"op": "add", "path": "/relations/-", "value": hyper},
        ]),
    );
    assert_eq!(twice.status, 400);
    assert_eq!(boards.item(1)["relations"], json!([commit, related]));
    assert_eq!(boards.item(1)["rev"], 3);
}

#[test]
fn boards_throttles_on_cue_with_the_rate_limit_headers() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    boards.throttle_next(2, 1);
    for _ in 0..2 {
        let r = ado.get(1);
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(
            r.tf_message(),
            "TF400733: The request has been canceled: Request was blocked due to exceeding usage of resource 'WorkItemTracking' in namespace 'User'."
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        for h in [
            "x-ratelimit-resource",
            "x-ratelimit-delay",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(r.header(h).is_some(), "no {h} in {:?}", r.headers);
        }
    }
    // A well-behaved client waits Retry-After before it asks again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ado.get(1).status, 200);
    let throttled = boards.throttled();
    assert_eq!(throttled.len(), 2);
    assert_eq!(throttled[1].retry_after, Duration::from_secs(1));
    assert!(throttled[0].next.is_some());
    assert!(throttled[1].waited().unwrap() >= Duration::from_secs(1));
    // Unauthenticated requests are refused before throttling is considered.
    boards.throttle_next(1, 1);
    let anon = call(&ado.item_url(1, "api-version=7.1"), "GET", &[], None);
    assert_eq!(anon.status, 401);
    assert_eq!(ado.get(1).status, 429);
}

#[test]
fn boards_comments_need_a_preview_version_and_page() {
    let boards = boards_with_items();
    let ado = Ado::new(&boards);
    let post = |query: &str, text: &str| {
        call(
            &ado.comments_url(1, query),
            "POST",
            &[
                ("authorization", &ado.auth),
                ("content-type", "application/json"),
            ],
            Some(&json!({ "text": text }).to_string()),
        )
    };
    let released = post("api-version=7.1", "no");
    assert_eq!(released.status, 400, "{}", released.body);
    assert!(
        released
            .tf_message()
            .contains("-preview flag must be supplied")
    );
    assert!(boards.history(1).is_empty());

    for i in 1..=4 {
        let r = post("api-version=7.0-preview.3", &format!("comment {i}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["id"], i);
        assert_eq!(r.json()["workItemId"], 1);
        assert_eq!(r.json()["text"], format!("comment {i}"));
    }
    // A comment is a revision, and a System.History entry is a comment.
    assert_eq!(boards.item(1)["rev"], 5);
    let r = ado.patch(
        1,
        &json!([{"op": "add", "path": "/fields/System.History", "value": "comment 5"}]),
    );
    assert_eq!(r.status, 200);
    assert_eq!(post("api-version=7.0-preview.3", "  ").status, 400);

    let mut texts = vec![];
    let mut query = "api-version=7.0-preview.3&$top=2".to_string();
    loop {
        let r = call(
            &ado.comments_url(1, &query),
            "GET",
            &[("authorization", &ado.auth)],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["totalCount"], 5);
        assert_eq!(v["count"], v["comments"].as_array().unwrap().len());
        texts.extend(
            v["comments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["text"].as_str().unwrap().to_string()),
        );
        match v["continuationToken"].as_str() {
            Some(t) => query = format!("api-version=7.0-preview.3&$top=2&continuationToken={t}"),
            None => break,
        }
    }
    // Newest first unless asked otherwise.
    let expected: Vec<String> = (1..=5).map(|i| format!("comment {i}")).collect();
    let newest_first: Vec<String> = expected.iter().rev().cloned().collect();
    assert_eq!(texts, newest_first);
    assert_eq!(boards.history(1), expected);
    let asc = call(
        &ado.comments_url(1, "api-version=7.0-preview.3&order=asc&$top=1"),
        "GET",
        &[("authorization", &ado.auth)],
        None,
    );
    assert_eq!(asc.json()["comments"][0]["text"], "comment 1");
    assert_eq!(asc.json()["count"], 1);

    let bad_token = call(
        &ado.comments_url(1, "api-version=7.0-preview.3&continuationToken=zzz"),
        "GET",
        &[("authorization", &ado.auth)],
        None,
    );
    assert_eq!(bad_token.status, 400);
    let missing = call(
        &ado.comments_url(42, "api-version=7.0-preview.3"),
        "GET",
        &[("authorization", &ado.auth)],
        None,
    );
    assert_eq!(missing.status, 404);
    assert!(missing.tf_message().starts_with("TF401232"));
}

// --------------------------------------------------------------- GitHub Issues

const TOKEN: &str = "ghp_secret_token_123";

fn gh(
    github: &GithubIssues,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<Value>,
) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![
        ("user-agent", "gantry-test"),
        ("accept", "application/vnd.github+json"),
        ("x-github-api-version", "2022-11-28"),
        ("authorization", auth.as_str()),
    ];
    for (k, v) in extra {
        headers.retain(|(h, _)| h != k);
        headers.push((k, v));
    }
    headers.retain(|(_, v)| !v.is_empty());
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}", github.url())
    };
    call(
        &url,
        method,
        &headers,
        body.map(|b| b.to_string()).as_deref(),
    )
}

/// The URL of `rel` in a Link header.
fn link(header: &str, rel: &str) -> Option<String> {
    header.split(", ").find_map(|part| {
        let (url, r) = part.split_once("; ")?;
        (r == format!("rel=\"{rel}\""))
            .then(|| url.trim_matches(|c| c == '<' || c == '>').to_string())
    })
}

#[test]
fn github_requires_a_user_agent_a_token_and_the_api_version() {
    let github = GithubIssues::start(TOKEN);
    github.add_issue("octo", "app", 1, "Bug");
    let get = |extra: &[(&str, &str)]| gh(&github, "GET", "/repos/octo/app/issues/1", extra, None);

    let no_agent = get(&[("user-agent", "")]);
    assert_eq!(no_agent.status, 403);
    assert!(no_agent.body.contains("User-Agent"), "{}", no_agent.body);

    let anonymous = get(&[("authorization", "")]);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["message"], "Requires authentication");
    for wrong in ["Bearer nope", "Basic Z2g6eA==", TOKEN] {
        let r = get(&[("authorization", wrong)]);
        assert_eq!(r.status, 401, "{wrong}");
        assert_eq!(r.json()["message"], "Bad credentials");
        assert!(r.json()["documentation_url"].is_string());
    }
    let version = get(&[("x-github-api-version", "2021-01-01")]);
    assert_eq!(version.status, 400);
    assert!(
        version.json()["message"]
            .as_str()
            .unwrap()
            .contains("2022-11-28")
    );

    let token_scheme = format!("token {TOKEN}");
    let ok = get(&[("authorization", &token_scheme)]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let issue = ok.json();
    assert_eq!(issue["number"], 1);
    assert_eq!(issue["title"], "Bug");
    assert_eq!(issue["state"], "open");
    assert!(issue["state_reason"].is_null());
    // The version header is optional.
    let unversioned = get(&[("x-github-api-version", "")]);
    assert_eq!(unversioned.status, 200);
    assert_eq!(unversioned.header("x-ratelimit-remaining"), Some("4998"));
    assert_eq!(unversioned.header("x-ratelimit-used"), Some("2"));
    assert_eq!(unversioned.header("x-ratelimit-limit"), Some("5000"));
    assert_eq!(unversioned.header("x-ratelimit-resource"), Some("core"));
    assert!(unversioned.header("x-ratelimit-reset").is_some());

    assert_eq!(
        gh(&github, "GET", "/repos/octo/app/issues/2", &[], None).status,
        404
    );
    let nothing = gh(&github, "GET", "/repos/octo/other/issues/1", &[], None);
    assert_eq!(nothing.status, 404);
    assert_eq!(nothing.json()["message"], "Not Found");
    // Owner and repository match ignoring case.
    assert_eq!(
        gh(&github, "GET", "/repos/Octo/App/issues/1", &[], None).status,
        200
    );
}

#[test]
fn github_comments_page_with_link_headers() {
    let github = GithubIssues::start(TOKEN);
    github.add_issue("octo", "app", 7, "Feature");
    for i in 1..=60 {
        github.add_comment("octo", "app", 7, &format!("old {i}"));
    }
    for i in 61..=65 {
        let r = gh(
            &github,
            "POST",
            "/repos/octo/app/issues/7/comments",
            &[],
            Some(json!({ "body": format!("new {i}") })),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["body"], format!("new {i}"));
        assert!(r.header("location").is_some());
    }
    let first = gh(
        &github,
        "GET",
        "/repos/octo/app/issues/7/comments",
        &[],
        None,
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.json().as_array().unwrap().len(), 30);
    let links = first.header("link").expect("a Link header").to_string();
    assert!(link(&links, "prev").is_none());
    assert!(link(&links, "last").unwrap().ends_with("page=3"), "{links}");

    // Follow `next` as given (GitHub's form: /repositories/{id}/...).
    let mut bodies: Vec<String> = first
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"].as_str().unwrap().to_string())
        .collect();
    let mut next = link(&links, "next");
    while let Some(url) = next {
        assert!(url.contains("/repositories/"), "{url}");
        let r = gh(&github, "GET", &url, &[], None);
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        bodies.extend(
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["body"].as_str().unwrap().to_string()),
        );
        next = r.header("link").and_then(|l| link(l, "next"));
    }
    let expected: Vec<String> = (1..=60)
        .map(|i| format!("old {i}"))
        .chain((61..=65).map(|i| format!("new {i}")))
        .collect();
    assert_eq!(bodies, expected);
    assert_eq!(github.issue("octo", "app", 7)["comments"], json!(expected));

    let all = gh(
        &github,
        "GET",
        "/repos/octo/app/issues/7/comments?per_page=100",
        &[],
        None,
    );
    assert_eq!(all.json().as_array().unwrap().len(), 65);
    assert!(all.header("link").is_none());
    let last = gh(
        &github,
        "GET",
        "/repos/octo/app/issues/7/comments?per_page=30&page=3",
        &[],
        None,
    );
    assert_eq!(last.json().as_array().unwrap().len(), 5);
    assert!(link(last.header("link").unwrap(), "next").is_none());

    let empty = gh(
        &github,
        "POST",
        "/repos/octo/app/issues/7/comments",
        &[],
        Some(json!({ "text": "wrong key" })),
    );
    assert_eq!(empty.status, 422);
    // Only the five accepted comments are writes.
    let writes = github.writes();
    assert_eq!(writes.len(), 5);
    assert_eq!(
        writes[0],
        (
            "POST".to_string(),
            "/repos/octo/app/issues/7/comments".to_string(),
            json!({ "body": "new 61" })
        )
    );
}

#[test]
fn github_labels_are_added_once_and_close_is_validated() {
    let github = GithubIssues::start(TOKEN);
    github.add_issue("octo", "app", 3, "Bug");
    let labels = json!({ "labels": ["deployed:aks"] });
    for _ in 0..2 {
        let r = gh(
            &github,
            "POST",
            "/repos/octo/app/issues/3/labels",
            &[],
            Some(labels.clone()),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let names: Vec<String> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["deployed:aks"]);
    }
    assert_eq!(
        gh(
            &github,
            "POST",
            "/repos/octo/app/issues/3/labels",
            &[],
            Some(json!({ "labels": [] }))
        )
        .status,
        422
    );

    let patch = |body: Value| {
        gh(
            &github,
            "PATCH",
            "/repos/octo/app/issues/3",
            &[],
            Some(body),
        )
    };
    for (body, field) in [
        (json!({ "state": "done" }), "state"),
        (
            json!({ "state": "closed", "state_reason": "wontfix" }),
            "state_reason",
        ),
        (
            json!({ "state": "closed", "state_reason": "reopened" }),
            "state_reason",
        ),
    ] {
        let r = patch(body.clone());
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        let v = r.json();
        assert_eq!(v["message"], "Validation Failed");
        assert_eq!(v["errors"][0]["field"], field, "{v}");
        assert_eq!(v["errors"][0]["code"], "invalid");
    }
    let bad_json = gh(&github, "PATCH", "/repos/octo/app/issues/3", &[], None);
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["message"], "Problems parsing JSON");
    // A reason alone is ignored (and still a write GitHub accepts).
    assert_eq!(patch(json!({ "state_reason": "not_planned" })).status, 200);
    assert_eq!(github.issue("octo", "app", 3)["state"], "open");
    assert!(github.issue("octo", "app", 3)["state_reason"].is_null());

    let closed = patch(json!({ "state": "closed", "state_reason": "completed" }));
    assert_eq!(closed.status, 200, "{}", closed.body);
    assert_eq!(closed.json()["state"], "closed");
    assert_eq!(closed.json()["state_reason"], "completed");
    assert!(closed.json()["closed_at"].is_string());
    assert_eq!(
        github.issue("octo", "app", 3),
        json!({
            "number": 3, "title": "Bug", "state": "closed", "state_reason": "completed",
            "labels": ["deployed:aks"], "comments": [],
        })
    );
    let methods: Vec<(String, String)> = github
        .writes()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    assert_eq!(
        methods,
        [
            (
                "POST".to_string(),
                "/repos/octo/app/issues/3/labels".to_string()
            ),
            (
                "POST".to_string(),
                "/repos/octo/app/issues/3/labels".to_string()
            ),
            ("PATCH".to_string(), "/repos/octo/app/issues/3".to_string()),
            ("PATCH".to_string(), "/repos/octo/app/issues/3".to_string()),
        ]
    );
}

#[test]
fn github_rate_limits_on_cue() {
    let github = GithubIssues::start(TOKEN);
    github.add_issue("octo", "app", 1, "Bug");
    let get = || gh(&github, "GET", "/repos/octo/app/issues/1", &[], None);

    github.secondary_limit_next(1, 1);
    let limited = get();
    assert_eq!(limited.status, 403);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert!(
        limited.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("You have exceeded a secondary rate limit"),
        "{}",
        limited.body
    );
    assert!(limited.header("x-ratelimit-remaining").is_some());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(get().status, 200);

    github.exhaust_primary(2);
    let exhausted = get();
    assert_eq!(exhausted.status, 403);
    assert_eq!(exhausted.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        exhausted.json()["message"]
            .as_str()
            .unwrap()
            .contains("API rate limit exceeded")
    );
    let reset: u64 = exhausted
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    // Comments are refused too while the limit lasts, and not recorded as writes.
    let write = gh(
        &github,
        "POST",
        "/repos/octo/app/issues/1/comments",
        &[],
        Some(json!({ "body": "x" })),
    );
    assert_eq!(write.status, 403);
    assert!(github.writes().is_empty());
    // Wait for the reset the header names, as a client must.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        < reset
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = get();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("x-ratelimit-remaining"), Some("4999"));

    let throttled = github.throttled();
    assert_eq!(throttled.len(), 3);
    assert_eq!(throttled[0].retry_after, Duration::from_secs(1));
    assert!(throttled[0].waited().unwrap() >= Duration::from_secs(1));
    assert!(throttled.iter().all(|t| t.next.is_some()));
}
