//! Reading `GET /v1/events`: server-sent events (`event:` / `data:` lines, a blank line ends
//! one), each `data` a JSON [`Event`].

use berth_proto::Event;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::ClientError;

/// The daemon's event stream. Ends (`None`) when the daemon closes it, e.g. when it stops.
#[derive(Debug)]
pub struct Events {
    body: Incoming,
    parser: Parser,
}

impl Events {
    pub(crate) fn new(body: Incoming) -> Self {
        Events {
            body,
            parser: Parser::default(),
        }
    }

    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            if let Some(data) = self.parser.next_data() {
                return Some(serde_json::from_str(&data).map_err(ClientError::Decode));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Some(bytes) = frame.data_ref() {
                        self.parser.push(bytes);
                    }
                }
                Err(e) => return Some(Err(ClientError::Http(Box::new(e)))),
            }
        }
    }
}

/// An incremental SSE parser: bytes in, the `data` of complete events out. Comments (`:`
/// lines, used as keep-alives) and fields other than `data` are skipped.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    data: Option<String>,
    ready: std::collections::VecDeque<String>,
}

impl Parser {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if let Some(d) = self.data.take() {
                    self.ready.push_back(d);
                }
            } else if let Some(v) = line.strip_prefix("data:") {
                let v = v.strip_prefix(' ').unwrap_or(v);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(v);
                    }
                    None => self.data = Some(v.to_string()),
                }
            }
        }
    }

    pub(crate) fn next_data(&mut self) -> Option<String> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let wire = b": keep-alive\n\nevent: removed\ndata: {\"type\":\"removed\",\ndata: \"service\":\"x\",\"at\":1}\n\nevent: daemon\r\ndata: {}\r\n\r\n";
        for cut in 0..wire.len() {
            let mut p = Parser::default();
            p.push(&wire[..cut]);
            p.push(&wire[cut..]);
            assert_eq!(
                p.next_data().as_deref(),
                Some("{\"type\":\"removed\",\n\"service\":\"x\",\"at\":1}"),
                "cut at {cut}"
            );
            assert_eq!(p.next_data().as_deref(), Some("{}"), "cut at {cut}");
            assert_eq!(p.next_data(), None);
        }
    }
}
