//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`), version 1
//! (one text line) and version 2 (binary), parsed from the first bytes of a
//! connection. Strict: anything but a well-formed header is an error, never
//! a guess. Pure and allocation-free, so transports feed it whatever they have
//! read and fuzzing feeds it anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A v1 line is at most 107 bytes, CRLF included (spec, 2.1).
pub const V1_MAX: usize = 107;
/// The shortest v1 line: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
const V1_PREFIX: &[u8] = b"PROXY ";
/// The 12-byte v2 signature, then version/command, family, and length.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;
/// Address block plus TLVs accepted after the fixed part of a v2 header. The
/// spec allows 65,535; a balancer sends the addresses (at most 216 bytes)
/// and a few TLVs (unique id, TLS facts), and a stranger who got through
/// would otherwise hold a 64 KiB buffer per connection.
pub const V2_MAX_PAYLOAD: usize = 2048;

/// The result of looking at the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid start: at least this many more bytes are needed (never more
    /// than the header has left, so a reader can read exactly that much).
    Incomplete { at_least: usize },
    /// A whole header of `len` bytes. `source` is the client the balancer
    /// speaks for; `None` when it speaks for nobody (v2 LOCAL, e.g. its
    /// health checks; v1 UNKNOWN; v2 UNSPEC or unix addresses): the
    /// connection's own peer address stands.
    Complete { source: Option<SocketAddr>, len: usize },
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Parse the header at the start of `buf` (which may hold more: the
/// client's first bytes follow it).
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete { at_least: V1_MIN }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(HeaderError::NotProxy),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(HeaderError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        if window.len() == V1_MAX {
            return Err(HeaderError::V1("no CRLF within 107 bytes"));
        }
        if window.contains(&b'\r') && window.last() != Some(&b'\r') {
            return Err(HeaderError::V1("CR not followed by LF"));
        }
        return Ok(Parsed::Incomplete { at_least: V1_MIN.saturating_sub(buf.len()).max(1) });
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(HeaderError::V1("line not ended by CRLF"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end - 1])
        .map_err(|_| HeaderError::V1("not ASCII"))?;
    if !line.is_ascii() || line.contains('\r') {
        return Err(HeaderError::V1("not ASCII"));
    }
    let len = end + 1;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The rest of an UNKNOWN line is ignored by definition (spec, 2.1).
        return Ok(Parsed::Complete { source: None, len });
    }
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    let (src, dst, sport, dport) =
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(a), Some(b), Some(c), Some(d)) if fields.next().is_none() => (a, b, c, d),
            _ => return Err(HeaderError::V1("expected four fields after the protocol")),
        };
    let (src, _dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (IpAddr::V4(v4_address(src)?), IpAddr::V4(v4_address(dst)?)),
        "TCP6" => (
            IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| HeaderError::V1("bad IPv6 address"))?),
            IpAddr::V6(dst.parse::<Ipv6Addr>().map_err(|_| HeaderError::V1("bad IPv6 address"))?),
        ),
        _ => return Err(HeaderError::V1("unknown protocol")),
    };
    let sport = port(sport)?;
    port(dport)?;
    Ok(Parsed::Complete { source: Some(SocketAddr::new(src.to_canonical(), sport)), len })
}

/// Dotted quad only: Rust's parser already refuses leading zeros and
/// shorthand forms, which the spec excludes too.
fn v4_address(s: &str) -> Result<Ipv4Addr, HeaderError> {
    s.parse().map_err(|_| HeaderError::V1("bad IPv4 address"))
}

/// A decimal port, 0 to 65535, digits only, no leading zero.
fn port(s: &str) -> Result<u16, HeaderError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(HeaderError::V1("bad port"));
    }
    s.parse().map_err(|_| HeaderError::V1("bad port"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(HeaderError::NotProxy);
    }
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete { at_least: V2_FIXED - buf.len() });
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0F);
    if version != 2 {
        return Err(HeaderError::V2("version is not 2"));
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0F);
    if family > 3 || transport > 2 {
        return Err(HeaderError::V2("unknown address family or transport"));
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(HeaderError::V2("longer than 2048 bytes after the fixed part"));
    }
    let len = V2_FIXED + payload;
    if buf.len() < len {
        return Ok(Parsed::Incomplete { at_least: len - buf.len() });
    }
    let body = &buf[V2_FIXED..len];
    match command {
        // LOCAL: the balancer's own connection (health checks); the
        // address block, whatever it holds, is to be ignored.
        0x0 => return Ok(Parsed::Complete { source: None, len }),
        0x1 => {}
        _ => return Err(HeaderError::V2("unknown command")),
    }
    // Addresses are fixed-size per family; what follows them is TLVs, skipped.
    let source = match family {
        0x1 => {
            let a = body.get(..12).ok_or(HeaderError::V2("IPv4 address block too short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        0x2 => {
            let a = body.get(..36).ok_or(HeaderError::V2("IPv6 address block too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = IpAddr::V6(Ipv6Addr::from(octets)).to_canonical();
            Some(SocketAddr::new(ip, u16::from_be_bytes([a[32], a[33]])))
        }
        0x3 => {
            if body.len() < 216 {
                return Err(HeaderError::V2("unix address block too short"));
            }
            None
        }
        _ => None,
    };
    Ok(Parsed::Complete { source, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(body);
        out
    }

    fn inet4_body() -> Vec<u8> {
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1];
        body.extend(51000u16.to_be_bytes());
        body.extend(1883u16.to_be_bytes());
        body
    }

    fn complete(buf: &[u8]) -> (Option<SocketAddr>, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { source, len }) => (source, len),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    #[test]
    fn a_v1_tcp4_line_names_the_client_and_leaves_what_follows() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n";
        let mut buf = line.to_vec();
        buf.extend(b"\x10\x10rest");
        let (source, len) = complete(&buf);
        assert_eq!(source, Some("192.0.2.7:51000".parse().unwrap()));
        assert_eq!(len, line.len());
    }

    #[test]
    fn a_v1_tcp6_line_and_unknown_lines_are_understood() {
        let (source, _) = complete(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n");
        assert_eq!(source, Some("[2001:db8::7]:4000".parse().unwrap()));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (None, 15));
        assert_eq!(complete(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").0, None);
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 51000\r\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883 9\r\n",
            b"PROXY TCP4 192.0.2.7  10.0.0.1 51000 1883\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 51000 1883\r\n",
            b"PROXY TCP6 192.0.2.7 10.0.0.1 51000 1883\r\n",
            b"PROXY TCP4 192.0.2.07 10.0.0.1 51000 1883\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 1883\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +5 1883\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 051 1883\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 51000 1883\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\n",
            b"PROXY TCP4 192.0.2.7\r10.0.0.1 51000 1883\r\n",
            b"PROXY TCP4 192.0.2.\xff 10.0.0.1 51000 1883\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::V1(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(parse(&long), Err(HeaderError::V1("no CRLF within 107 bytes")));
    }

    #[test]
    fn anything_else_is_not_a_header() {
        for other in
            [&b"\x10\x0c\x00\x04MQTT"[..], b"GET / HTTP/1.1\r\n", b"PROXZ", b"\r\n\r\n\0\r\nQUIX"]
        {
            assert_eq!(parse(other), Err(HeaderError::NotProxy), "{other:?}");
        }
    }

    #[test]
    fn a_partial_header_asks_for_no_more_than_it_lacks() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n";
        let mut len = 0;
        while len < line.len() {
            match parse(&line[..len]) {
                Ok(Parsed::Incomplete { at_least }) => {
                    assert!(at_least >= 1 && len + at_least <= line.len(), "at {len}");
                    len += at_least;
                }
                other => panic!("{other:?} at {len}"),
            }
        }
        assert_eq!(complete(line).1, line.len());
        let header = v2(1, 0x11, &inet4_body());
        let mut len = 0;
        while len < header.len() {
            match parse(&header[..len]) {
                Ok(Parsed::Incomplete { at_least }) => {
                    assert!(len + at_least <= header.len(), "at {len}");
                    len += at_least;
                }
                other => panic!("{other:?} at {len}"),
            }
        }
        // The shortest v1 line must not be over-read either.
        assert_eq!(parse(b""), Ok(Parsed::Incomplete { at_least: 15 }));
    }

    #[test]
    fn a_v2_header_names_the_client_and_skips_its_tlvs() {
        let mut body = inet4_body();
        // A unique-id TLV (0x05) the receiver does not need.
        body.extend([0x05, 0x00, 0x03, b'a', b'b', b'c']);
        let header = v2(1, 0x11, &body);
        let mut buf = header.clone();
        buf.extend(b"GET /");
        assert_eq!(complete(&buf), (Some("192.0.2.7:51000".parse().unwrap()), header.len()));

        let mut six = [0u8; 36];
        six[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        six[32..34].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(complete(&v2(1, 0x21, &six)).0, Some("[2001:db8::7]:4000".parse().unwrap()));
        // A v4-mapped source counts as the IPv4 address it is.
        six[..16].copy_from_slice(&"::ffff:192.0.2.9".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(complete(&v2(1, 0x21, &six)).0, Some("192.0.2.9:4000".parse().unwrap()));
    }

    #[test]
    fn v2_local_unspec_and_unix_speak_for_nobody() {
        assert_eq!(complete(&v2(0, 0x00, &[])), (None, 16));
        // LOCAL ignores even a nonsensical address block.
        assert_eq!(complete(&v2(0, 0x11, &[1, 2])).0, None);
        assert_eq!(complete(&v2(1, 0x00, &[])).0, None);
        assert_eq!(complete(&v2(1, 0x31, &[0; 216])).0, None);
    }

    #[test]
    fn malformed_v2_headers_are_refused() {
        let mut bad_version = v2(1, 0x11, &inet4_body());
        bad_version[12] = 0x11;
        let too_long = {
            let mut h = v2(1, 0x11, &[]);
            h[14..16].copy_from_slice(&(V2_MAX_PAYLOAD as u16 + 1).to_be_bytes());
            h
        };
        for bad in [
            bad_version,
            v2(2, 0x11, &inet4_body()),
            v2(1, 0x41, &inet4_body()),
            v2(1, 0x13, &inet4_body()),
            v2(1, 0x11, &inet4_body()[..11]),
            v2(1, 0x21, &[0; 35]),
            v2(1, 0x31, &[0; 215]),
            too_long,
        ] {
            assert!(matches!(parse(&bad), Err(HeaderError::V2(_))), "{bad:?}: {:?}", parse(&bad));
        }
    }
}
