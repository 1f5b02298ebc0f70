//! `one-shot-server [MODE]`: listens on an ephemeral port of 127.0.0.1, prints the port, reads
//! one HTTP/1.1 request (any path) and exits. The churn test and `cargo xtask churn`/`soak`
//! run thousands of them: processes that live for one request. MODE:
//! - `close` (default): answers `200 OK` with `Connection: close` and closes;
//! - `exit-after-answer`: answers `200 OK` (keep-alive) and exits without closing, as a
//!   killed server leaves the last response of a keep-alive connection;
//! - `exit-unanswered`: exits without answering or closing, as a server that dies
//!   mid-request;
//! - `read-ahead`: prints `read` once it has the request, reads one byte of the next before
//!   answering it (Go's net/http reads a byte ahead while a handler runs), then answers that
//!   next request too and closes.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::ExitCode,
};

fn accept_request() -> std::io::Result<TcpStream> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?.port())?;
    stdout.flush()?;
    let (mut stream, _) = listener.accept()?;
    read_head(&mut stream)?;
    Ok(stream)
}

/// Reads until the end of a request head.
fn read_head(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

fn serve_once(mode: &str) -> std::io::Result<()> {
    let mut stream = accept_request()?;
    match mode {
        "close" => stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"),
        "exit-after-answer" => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")?;
            // No destructor runs: the kernel closes the socket at exit, with no close(2).
            std::process::exit(0)
        }
        "exit-unanswered" => std::process::exit(0),
        "read-ahead" => {
            println!("read");
            // One read(2) of one byte: the next request's first.
            stream.read_exact(&mut [0u8; 1])?;
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")?;
            read_head(&mut stream)?;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        }
        other => Err(std::io::Error::other(format!("unknown mode {other}"))),
    }
}

fn main() -> ExitCode {
    let mode = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "close".to_owned());
    match serve_once(&mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("one-shot-server: {error}");
            ExitCode::FAILURE
        }
    }
}
