use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::{self, JoinHandle};

use super::*;

/// A server on a free local port answering one canned response per connection, in order;
/// the URL points at it.
fn server(responses: Vec<String>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readings", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        for response in responses {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            stream.write_all(response.as_bytes()).unwrap();
        }
    });
    (url, handle)
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn source(pairs: &[(&str, &str)]) -> HttpSource {
    HttpSource::init(pairs.iter().copied().collect(), None).unwrap()
}

fn values(records: &[SourceRecord]) -> Vec<&str> {
    records
        .iter()
        .map(|r| std::str::from_utf8(r.record.value.as_deref().unwrap()).unwrap())
        .collect()
}

#[test]
fn a_json_array_gives_one_compact_record_per_element_keyed_by_a_field() {
    let body = "[\n  {\"id\": \"a\", \"v\": 1.50},\n  {\"v\": 2, \"id\": 7},\n  {\"v\": 3}\n]";
    let (url, server) = server(vec![ok(body)]);
    let mut source = source(&[
        ("url", &url),
        ("key.field", "id"),
        ("interval.ms", "100000"),
    ]);
    let records = source.poll(10).unwrap();
    assert_eq!(
        values(&records),
        [r#"{"id":"a","v":1.50}"#, r#"{"v":2,"id":7}"#, r#"{"v":3}"#]
    );
    let keys: Vec<_> = records.iter().map(|r| r.record.key.as_deref()).collect();
    assert_eq!(keys, [Some(&b"a"[..]), Some(&b"7"[..]), None]);
    let request = Request::from_position(&records[2].position).unwrap();
    assert_eq!(request.number, 1);
    assert!(records[0].record.timestamp >= request.started_ms);
    server.join().unwrap();

    assert!(
        source.poll(10).unwrap().is_empty(),
        "the interval has not passed"
    );
    assert_eq!(source.last_request.map(|r| r.number), Some(1));
}

#[test]
fn failures_are_warnings_retried_at_the_next_interval() {
    let unavailable =
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy";
    let (url, server) = server(vec![unavailable.to_owned(), ok("{\"n\":1}\n{\"n\":2}\n")]);
    let mut source = source(&[("url", &url), ("interval.ms", "50")]);
    assert!(source.poll(10).unwrap().is_empty());
    assert!(
        source.poll(10).unwrap().is_empty(),
        "not before the interval"
    );
    thread::sleep(Duration::from_millis(60));
    assert_eq!(
        values(&source.poll(10).unwrap()),
        [r#"{"n":1}"#, r#"{"n":2}"#]
    );
    server.join().unwrap();

    // The server is gone: a refused connection is a warning too.
    thread::sleep(Duration::from_millis(60));
    assert!(source.poll(10).unwrap().is_empty());
    assert_eq!(source.last_request.map(|r| r.number), Some(3));
}

#[test]
fn records_beyond_max_wait_for_later_polls_and_hold_back_the_next_request() {
    let (url, server) = server(vec![ok("[1,2,3,4,5]")]);
    let mut source = source(&[("url", &url), ("interval.ms", "1")]);
    assert_eq!(values(&source.poll(2).unwrap()), ["1", "2"]);
    thread::sleep(Duration::from_millis(5));
    assert_eq!(values(&source.poll(2).unwrap()), ["3", "4"]);
    assert_eq!(values(&source.poll(2).unwrap()), ["5"]);
    assert_eq!(source.last_request.map(|r| r.number), Some(1));
    server.join().unwrap();
}

#[test]
fn bodies_split_by_format() {
    let split_values = |body: &str, format| {
        split(body.as_bytes(), format)
            .values
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        split_values("{ \"a\": [1, 2] }", Format::Auto),
        [r#"{"a":[1,2]}"#]
    );
    assert_eq!(
        split_values(" [ {\"a\":1}, 2 ] ", Format::Auto),
        [r#"{"a":1}"#, "2"]
    );
    assert_eq!(
        split_values("{\"a\":1}\n{\"a\":2}\r\n\n", Format::Auto),
        [r#"{"a":1}"#, r#"{"a":2}"#]
    );
    assert_eq!(split_values("\"text\"", Format::Auto), [r#""text""#]);
    assert_eq!(
        split_values("[1, 2]\n[3]", Format::Ndjson),
        ["[1,2]", "[3]"]
    );
    assert_eq!(split_values("[1, 2]", Format::Ndjson), ["[1,2]"]);
    assert_eq!(split_values("  \n", Format::Json), Vec::<String>::new());

    let bad = split(b"{\"a\":1}\nnot json\n{\"a\":2}\n{", Format::Ndjson);
    assert_eq!((bad.values.len(), bad.bad), (2, 2));
    assert!(bad.first_error.unwrap().starts_with("line 2:"));
    let bad = split(b"{\"a\":1}\n{\"a\":2}", Format::Json);
    assert_eq!((bad.values.len(), bad.bad), (0, 1));
}

#[test]
fn a_restart_keeps_the_request_schedule() {
    // Nothing listens at this URL: a request shows as a new request number.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let resume = |started_ms: i64| {
        let position = Request {
            number: 4,
            started_ms,
        }
        .position();
        assert_eq!(position.len(), POSITION_LEN);
        let config = [("url", closed.as_str()), ("interval.ms", "60000")];
        HttpSource::init(config.into_iter().collect(), Some(position)).unwrap()
    };
    let mut recent = resume(host::now_ms());
    assert!(recent.poll(10).unwrap().is_empty());
    assert_eq!(
        recent.last_request.map(|r| r.number),
        Some(4),
        "no request yet"
    );
    let mut old = resume(host::now_ms() - 60_000);
    assert!(old.poll(10).unwrap().is_empty());
    assert_eq!(
        old.last_request.map(|r| r.number),
        Some(5),
        "requested at once"
    );

    let config = || [("url", closed.as_str())].into_iter().collect();
    assert!(HttpSource::init(config(), Some(vec![1, 2, 3])).is_err());
    assert!(HttpSource::init(config(), Some(vec![9; POSITION_LEN])).is_err());
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let init = |pairs: &[(&str, &str)]| {
        HttpSource::init(pairs.iter().copied().collect(), None).unwrap_err()
    };
    assert!(init(&[]).contains("`url`"));
    assert!(init(&[("url", "https://example.com/")]).contains("https"));
    assert!(init(&[("url", "http://h/"), ("format", "xml")]).contains("format"));
    assert!(init(&[("url", "http://h/"), ("interval.ms", "0")]).contains("interval.ms"));
    assert!(init(&[("url", "http://h/"), ("timeout.ms", "10000")]).contains("timeout.ms"));
    assert!(init(&[("url", "http://h/"), ("colour", "red")]).contains("unknown key(s) colour"));
    assert!(init(&[("url", "http://h/"), ("header.Bad Name", "x")]).contains("header name"));
    let ok = HttpSource::init(
        [("url", "http://h/"), ("header.Accept", "application/json")]
            .into_iter()
            .collect(),
        None,
    );
    assert!(ok.is_ok());
}
