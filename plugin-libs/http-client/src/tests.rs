//! The client against in-test servers: a `TcpListener` on a free local port and a thread that
//! answers with canned bytes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `serve` on a listener on a free port, in a thread; the URL points at it.
fn server<T: Send + 'static>(
    serve: impl FnOnce(TcpListener) -> T + Send + 'static,
) -> (Url, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/data?x=1", listener.local_addr().unwrap());
    (
        Url::parse(&url).unwrap(),
        thread::spawn(move || serve(listener)),
    )
}

/// A request as the server saw it.
#[derive(Debug)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head, then a `Content-Length` body); `None` when the client closed.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap() == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut field = String::new();
        reader.read_line(&mut field).unwrap();
        let field = field.trim_end();
        if field.is_empty() {
            break;
        }
        let (name, value) = field.split_once(':').unwrap();
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut seen = Seen {
        line: line.trim_end().to_owned(),
        headers,
        body: Vec::new(),
    };
    let length: usize = seen
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    seen.body = vec![0; length];
    reader.read_exact(&mut seen.body).unwrap();
    Some(seen)
}

/// For each canned response: accept a connection, read one request, write the response in
/// small pieces (so the client sees partial reads), close.
fn answer_each(listener: TcpListener, responses: Vec<&'static [u8]>) -> Vec<Seen> {
    responses
        .into_iter()
        .map(|response| {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let seen = read_request(&mut reader).unwrap();
            write_in_pieces(&stream, response);
            seen
        })
        .collect()
}

fn write_in_pieces(mut stream: &TcpStream, bytes: &[u8]) {
    for piece in bytes.chunks(7) {
        // The client may give up (an oversized body): its reset is not the server's problem.
        if stream.write_all(piece).is_err() {
            return;
        }
        thread::sleep(Duration::from_micros(200));
    }
}

fn client(url: Url) -> Client {
    Client::new(url, vec![("X-Token".into(), "secret".into())]).unwrap()
}

#[test]
fn content_length_responses_keep_one_connection_alive() {
    let (url, server) = server(|listener| {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut seen = Vec::new();
        for body in ["hello", "world!"] {
            seen.push(read_request(&mut reader).unwrap());
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            write_in_pieces(&stream, response.as_bytes());
        }
        listener.set_nonblocking(true).unwrap();
        let second_connection = listener.accept();
        (seen, second_connection.is_ok())
    });
    let mut client = client(url.clone());
    let first = client.get(TIMEOUT).unwrap();
    assert_eq!((first.status, first.body.as_slice()), (200, &b"hello"[..]));
    let extra = [("X-Appliance-Offsets".to_owned(), "3-5".to_owned())];
    let second = client.post(&extra, b"[1,2,3]", TIMEOUT).unwrap();
    assert_eq!(second.body, b"world!");

    let (seen, reconnected) = server.join().unwrap();
    assert!(!reconnected, "both requests went over one connection");
    assert_eq!(seen[0].line, "GET /data?x=1 HTTP/1.1");
    assert_eq!(seen[0].header("host"), Some(url.authority().as_str()));
    assert_eq!(seen[0].header("x-token"), Some("secret"));
    assert_eq!(seen[0].header("content-length"), None);
    assert_eq!(seen[1].line, "POST /data?x=1 HTTP/1.1");
    assert_eq!(seen[1].header("content-length"), Some("7"));
    assert_eq!(seen[1].header("x-appliance-offsets"), Some("3-5"));
    assert_eq!(seen[1].body, b"[1,2,3]");
}

#[test]
fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
    let (url, server) = server(|listener| {
        answer_each(
            listener,
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                  5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: 1\r\n\r\n",
            ],
        )
    });
    let response = client(url).get(TIMEOUT).unwrap();
    assert_eq!(response.body, b"hello, world");
    server.join().unwrap();
}

#[test]
fn close_delimited_bodies_are_read_to_the_end_and_the_next_request_reconnects() {
    let (url, server) = server(|listener| {
        answer_each(
            listener,
            vec![
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it\nuntil close",
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnext",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
        )
    });
    let mut client = client(url);
    assert_eq!(client.get(TIMEOUT).unwrap().body, b"all of it\nuntil close");
    assert_eq!(client.get(TIMEOUT).unwrap().body, b"next");
    let empty = client.get(TIMEOUT).unwrap();
    assert_eq!((empty.status, empty.body.len()), (204, 0));
    assert_eq!(server.join().unwrap().len(), 3);
}

#[test]
fn a_kept_connection_the_server_closed_is_replaced() {
    let (url, server) = server(|listener| {
        for body in ["one", "two"] {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            read_request(&mut reader).unwrap();
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{body}");
            write_in_pieces(&stream, response.as_bytes());
            // Dropping the stream closes it although the response allowed keep-alive.
        }
    });
    let mut client = client(url);
    assert_eq!(client.get(TIMEOUT).unwrap().body, b"one");
    thread::sleep(Duration::from_millis(20));
    assert_eq!(client.get(TIMEOUT).unwrap().body, b"two");
    server.join().unwrap();
}

#[test]
fn interim_responses_are_skipped_and_error_statuses_returned() {
    let (url, server) = server(|listener| {
        answer_each(
            listener,
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 26\r\nConnection: close\r\n\r\n\
                  overloaded, come back soon",
            ],
        )
    });
    let mut client = client(url);
    let created = client.get(TIMEOUT).unwrap();
    assert_eq!((created.status, created.body.as_slice()), (201, &b"ok"[..]));
    assert!(created.is_success());
    let unavailable = client.get(TIMEOUT).unwrap();
    assert_eq!(unavailable.status, 503);
    assert!(!unavailable.is_success());
    assert_eq!(unavailable.excerpt(10), "overloaded...");
    assert_eq!(unavailable.header("CONNECTION"), Some(&b"close"[..]));
    server.join().unwrap();
}

#[test]
fn bodies_over_the_limit_are_refused_whatever_their_framing() {
    let (url, server) = server(|listener| {
        answer_each(
            listener,
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n01234567890",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n678901\r\n0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\n\r\n0123456789 and more",
            ],
        )
    });
    let mut client = client(url).with_max_response_bytes(10);
    for _ in 0..3 {
        let error = client.get(TIMEOUT).unwrap_err();
        assert!(matches!(error, Error::TooLarge { limit: 10 }), "{error}");
    }
    server.join().unwrap();
}

#[test]
fn a_body_until_close_that_arrives_with_the_head_is_still_bounded() {
    let (url, server) = server(|listener| {
        let (mut stream, _) = listener.accept().unwrap();
        read_request(&mut BufReader::new(stream.try_clone().unwrap())).unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n0123456789 and more")
            .unwrap();
    });
    let error = client(url)
        .with_max_response_bytes(10)
        .get(TIMEOUT)
        .unwrap_err();
    assert!(matches!(error, Error::TooLarge { limit: 10 }), "{error}");
    server.join().unwrap();
}

#[test]
fn malformed_responses_are_errors_not_panics() {
    let answers: Vec<&'static [u8]> = vec![
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"HTTP/1.1 099 Odd\r\n\r\n",
    ];
    let count = answers.len();
    let (url, server) = server(move |listener| answer_each(listener, answers));
    let mut client = client(url);
    for _ in 0..count {
        let error = client.get(TIMEOUT).unwrap_err();
        assert!(matches!(error, Error::Malformed(_)), "{error}");
    }
    server.join().unwrap();
}

#[test]
fn a_silent_server_runs_into_the_deadline() {
    let (url, server) = server(|listener| {
        let (stream, _) = listener.accept().unwrap();
        read_request(&mut BufReader::new(stream.try_clone().unwrap())).unwrap();
        thread::sleep(Duration::from_millis(600));
        drop(stream);
    });
    let started = Instant::now();
    let error = client(url).get(Duration::from_millis(200)).unwrap_err();
    assert!(matches!(error, Error::Timeout(_)), "{error}");
    assert!(error.to_string().contains("200 ms"), "{error}");
    assert!(started.elapsed() < Duration::from_millis(500));
    server.join().unwrap();
}

#[test]
fn a_closed_port_is_a_connect_error_naming_the_address() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = Url::parse(&format!("http://{addr}/")).unwrap();
    let error = client(url).get(TIMEOUT).unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("wasi.net={addr}")),
        "{error}"
    );
}

#[test]
fn headers_that_could_break_the_request_are_refused() {
    assert!(check_header("Authorization", "Bearer x").is_ok());
    assert!(check_header("Bad Name", "x").is_err());
    assert!(check_header("", "x").is_err());
    assert!(check_header("X-A", "a\r\nX-Injected: 1").is_err());
    assert!(check_header("content-length", "5").is_err());
    assert!(check_header("Transfer-Encoding", "chunked").is_err());
    let url = Url::parse("http://127.0.0.1:1/").unwrap();
    assert!(Client::new(url.clone(), vec![("Connection".into(), "close".into())]).is_err());
    let extra = [("X-Topic".to_owned(), "a\nb".to_owned())];
    let error = client(url).post(&extra, b"", TIMEOUT).unwrap_err();
    assert!(matches!(error, Error::InvalidHeader(_)), "{error}");
}
