use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};

use super::*;

/// What the test server does with the next request.
enum Answer {
    Status(u16, &'static str),
    /// Waits, then answers 200.
    SlowOk(Duration),
    /// Closes the connection without an answer.
    Close,
}

/// A request as the server saw it.
#[derive(Debug)]
struct Seen {
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive server on a free local port answering requests from `answers` in order; the
/// thread returns what it saw once every answer is given.
fn server(answers: Vec<Answer>) -> (String, JoinHandle<Vec<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut answers = answers.into_iter();
        let mut seen = Vec::new();
        while answers.len() > 0 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while let Some(request) = read_request(&mut reader) {
                seen.push(request);
                let (status, body) = match answers.next() {
                    Some(Answer::Status(status, body)) => (status, body),
                    Some(Answer::SlowOk(delay)) => {
                        thread::sleep(delay);
                        (200, "")
                    }
                    Some(Answer::Close) | None => break,
                };
                let response = format!(
                    "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                // A client that gave up (a timeout) has closed its end: nothing to report.
                let _ = stream.write_all(response.as_bytes());
                if answers.len() == 0 {
                    break;
                }
            }
        }
        seen
    });
    (url, handle)
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut field = String::new();
        reader.read_line(&mut field).ok()?;
        let field = field.trim_end();
        if field.is_empty() {
            break;
        }
        let (name, value) = field.split_once(':')?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut seen = Seen {
        headers,
        body: String::new(),
    };
    let length: usize = seen.header("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    seen.body = String::from_utf8(body).ok()?;
    Some(seen)
}

fn sink(pairs: &[(&str, &str)]) -> HttpSink {
    HttpSink::init(pairs.iter().copied().collect()).unwrap()
}

/// Records at offsets from `first`, with these values.
fn records(first: i64, values: &[Option<&str>]) -> Vec<Record> {
    values
        .iter()
        .zip(first..)
        .map(|(value, offset)| Record {
            offset,
            value: value.map(|v| v.as_bytes().to_vec()),
            ..Record::from_value("")
        })
        .collect()
}

fn info() -> BatchInfo {
    BatchInfo::new("readings", 3)
}

#[test]
fn chunks_go_out_as_json_arrays_with_what_a_server_needs_to_deduplicate() {
    let (url, server) = server(vec![
        Answer::Status(200, ""),
        Answer::Status(201, ""),
        Answer::Status(204, ""),
    ]);
    let batch = records(
        10,
        &[
            Some("{ \"a\": 1.50 }"),
            Some("\"text\""),
            Some("plain text"),
            None,
            Some("[1, 2]"),
        ],
    );
    let mut sink = sink(&[("url", &url), ("batch.max", "2"), ("header.X-Key", "k")]);
    sink.put(&info(), batch).unwrap();
    sink.flush().unwrap();
    let seen = server.join().unwrap();
    let bodies: Vec<&str> = seen.iter().map(|s| s.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"[{"a":1.50},"text"]"#,
            r#"["plain text",null]"#,
            "[[1,2]]"
        ]
    );
    let offsets: Vec<_> = seen
        .iter()
        .map(|s| s.header("x-appliance-offsets"))
        .collect();
    assert_eq!(offsets, [Some("10-11"), Some("12-13"), Some("14-14")]);
    assert_eq!(seen[0].header("x-appliance-topic"), Some("readings"));
    assert_eq!(seen[0].header("x-appliance-partition"), Some("3"));
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[2].header("x-key"), Some("k"));
}

#[test]
fn ndjson_puts_one_value_per_line() {
    let (url, server) = server(vec![Answer::Status(200, "")]);
    let mut sink = sink(&[
        ("url", &url),
        ("format", "ndjson"),
        ("header.content-type", "text/plain"),
    ]);
    let batch = records(0, &[Some("{\n\"a\": 1\n}"), Some("x"), None]);
    sink.put(&info(), batch).unwrap();
    let seen = server.join().unwrap();
    assert_eq!(seen[0].body, "{\"a\":1}\n\"x\"\nnull\n");
    assert_eq!(seen[0].header("content-type"), Some("text/plain"));
}

#[test]
fn server_and_connection_failures_are_retried() {
    let (url, server) = server(vec![
        Answer::Status(503, "busy"),
        Answer::Close,
        Answer::Status(429, ""),
        Answer::Status(200, ""),
    ]);
    let mut sink = sink(&[("url", &url), ("retry.backoff.ms", "5")]);
    sink.put(&info(), records(0, &[Some("1"), Some("2")]))
        .unwrap();
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.body == "[1,2]"));
}

#[test]
fn a_chunk_that_keeps_failing_ends_the_put_at_its_first_record() {
    let (url, server) = server(vec![
        Answer::Status(200, ""),
        Answer::Status(500, "database down"),
        Answer::Status(502, "database down"),
    ]);
    let mut sink = sink(&[
        ("url", &url),
        ("batch.max", "2"),
        ("retries", "1"),
        ("retry.backoff.ms", "5"),
    ]);
    let error = sink
        .put(
            &info(),
            records(7, &[Some("1"), Some("2"), Some("3"), Some("4")]),
        )
        .unwrap_err();
    assert_eq!(error.index, 2, "{}", error.message);
    assert!(error.message.contains("offsets 9-10"), "{}", error.message);
    assert!(
        error.message.contains("502: database down"),
        "{}",
        error.message
    );
    assert_eq!(server.join().unwrap().len(), 3);
}

#[test]
fn a_refused_chunk_is_not_retried() {
    let (url, server) = server(vec![Answer::Status(400, "field `temp` must be a number")]);
    let mut sink = sink(&[("url", &url)]);
    let error = sink.put(&info(), records(0, &[Some("{}")])).unwrap_err();
    assert_eq!(error.index, 0);
    assert!(error.message.contains("refused"), "{}", error.message);
    assert!(
        error.message.contains("400: field `temp`"),
        "{}",
        error.message
    );
    assert_eq!(server.join().unwrap().len(), 1);
}

#[test]
fn an_unreachable_server_fails_the_put_within_the_budget() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let mut sink = sink(&[("url", &closed), ("retry.backoff.ms", "20")]);
    let started = Instant::now();
    let error = sink.put(&info(), records(0, &[Some("1")])).unwrap_err();
    assert_eq!(error.index, 0);
    assert!(
        error.message.contains("after 4 attempt(s)"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("cannot connect"),
        "{}",
        error.message
    );
    assert!(started.elapsed() < CALL_BUDGET);
    assert!(sink.put(&info(), Vec::new()).is_ok());
}

#[test]
fn a_slow_server_cannot_hold_a_put_past_its_budget() {
    let slow = || Answer::SlowOk(Duration::from_millis(1100));
    let (url, server) = server(vec![slow(), slow(), slow()]);
    let mut sink = sink(&[("url", &url), ("batch.max", "1")]);
    let started = Instant::now();
    let error = sink
        .put(
            &info(),
            records(0, &[Some("1"), Some("2"), Some("3"), Some("4")]),
        )
        .unwrap_err();
    // The third request gets the 0.8 s left of the budget, not its 2 s timeout.
    assert_eq!(error.index, 2, "{}", error.message);
    assert!(
        error.message.contains("no complete response within"),
        "{}",
        error.message
    );
    assert!(started.elapsed() < CALL_BUDGET + Duration::from_millis(200));
    assert_eq!(server.join().unwrap().len(), 3);
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let init =
        |pairs: &[(&str, &str)]| HttpSink::init(pairs.iter().copied().collect()).unwrap_err();
    assert!(init(&[]).contains("`url`"));
    assert!(init(&[("url", "https://h/")]).contains("https"));
    assert!(init(&[("url", "http://h/"), ("format", "csv")]).contains("format"));
    assert!(init(&[("url", "http://h/"), ("batch.max", "0")]).contains("batch.max"));
    assert!(init(&[("url", "http://h/"), ("retries", "99")]).contains("retries"));
    assert!(init(&[("url", "http://h/"), ("retry.backoff.ms", "0")]).contains("retry.backoff.ms"));
    assert!(init(&[("url", "http://h/"), ("timeout.ms", "5000")]).contains("timeout.ms"));
    assert!(
        init(&[("url", "http://h/"), ("header.Content-Length", "1")]).contains("set by the client")
    );
    assert!(init(&[("url", "http://h/"), ("topic", "x")]).contains("unknown key(s) topic"));
}
