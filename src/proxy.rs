//! PROXY protocol headers (versions 1 and 2) and the client address in `X-Forwarded-For`.
//!
//! A load balancer that speaks the PROXY protocol sends one header at the start of each
//! connection, before the client's bytes, carrying the original client and server addresses.
//! [`parse`] reads that header as specified in HAProxy's "The PROXY protocol, Versions 1 & 2"
//! (`doc/proxy-protocol.txt` in the HAProxy sources): version 1 is one line of text of at most
//! 107 bytes, version 2 a 16-byte binary header followed by an address block and optional
//! TLVs. It returns the addresses and the number of bytes to skip before the HTTP request.
//!
//! The specification requires a listener to expect the header on every connection of a port
//! that is configured for it, never to guess whether one is present, and to accept such
//! connections only from trusted proxies. Anything else would let a client claim any source
//! address. [`client_ip_from_forwarded_for`] applies the same rule to `X-Forwarded-For`: only
//! entries added by trusted proxies are believed.
//!
//! The module is pure: it reads caller-owned bytes and does no I/O, no clock reads and no
//! logging. Waiting for the rest of a header (with a timeout) is the listener's job.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Maximum length of a version 1 header, CRLF included (`PROXY UNKNOWN` with two full IPv6
/// addresses and ports).
pub const V1_MAX_LEN: usize = 107;

/// First 12 bytes of every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Maximum length of a version 2 address block (addresses and TLVs) in bytes. The length field
/// allows 65,535; real headers with TLVs stay far below this, and the bound keeps a
/// connection from making the listener buffer 64 KiB before the request.
pub const V2_MAX_BLOCK_LEN: u16 = 4096;

/// Length of the fixed part of a version 2 header: signature, version and command, family
/// and transport, block length.
const V2_FIXED_LEN: usize = 16;

/// Start of every version 1 header, the separating space included.
const V1_PREFIX: &[u8] = b"PROXY ";

/// Address block sizes of version 2 families (§2.2: two addresses and two ports).
const V2_INET_BLOCK: u16 = 12;
const V2_INET6_BLOCK: u16 = 36;
const V2_UNIX_BLOCK: u16 = 216;

/// Version 2 commands (low nibble of byte 13).
const V2_LOCAL: u8 = 0x0;
const V2_PROXY: u8 = 0x1;

/// Version 2 address families (high nibble of byte 14) and transports (low nibble).
const FAMILY_INET: u8 = 0x1;
const FAMILY_INET6: u8 = 0x2;
const FAMILY_UNIX: u8 = 0x3;
const TRANSPORT_STREAM: u8 = 0x1;
const TRANSPORT_DGRAM: u8 = 0x2;

/// PROXY protocol version of a parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Endpoints of the client's original connection, as the proxy reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddresses {
    /// The client's address and port.
    pub source: SocketAddr,
    /// The address and port the client connected to (on the proxy).
    pub destination: SocketAddr,
}

/// A complete, valid PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    /// Bytes the header occupies at the start of the stream; the client's data follows them.
    pub len: usize,
    /// The original endpoints, or `None` when the header carries none to use: version 1
    /// `UNKNOWN`, version 2 `LOCAL` (the proxy's own health check), and version 2 families or
    /// transports without IP addresses (unspecified, UNIX sockets, datagrams). Use the
    /// socket's peer address then.
    pub addresses: Option<ProxyAddresses>,
}

/// Error from parsing a PROXY protocol header or a trusted network.
///
/// A connection with an invalid header must be closed without a response: the bytes came
/// from a misconfigured proxy or from a client that should not reach this port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "invalid trusted network: expected an IP address with an optional prefix length, such as 10.0.0.0/8 or 2001:db8::/32"
    )]
    CidrInvalid,
    #[error(
        "the connection does not start with a PROXY protocol header; only proxies that send one may connect to this port"
    )]
    NotProxy,
    #[error("invalid PROXY v1 header: an address is not a valid address of the stated protocol")]
    V1Address,
    #[error(
        "invalid PROXY v1 header: expected `PROXY TCP4|TCP6 <source> <destination> <source port> <destination port>` with single spaces"
    )]
    V1Fields,
    #[error("invalid PROXY v1 header: the line ends with a lone LF instead of CRLF")]
    V1LineEnding,
    #[error("invalid PROXY v1 header: no CRLF within the first 107 bytes")]
    V1LineTooLong,
    #[error(
        "invalid PROXY v1 header: a port is not a decimal number from 0 to 65535 without leading zeros"
    )]
    V1Port,
    #[error("invalid PROXY v1 header: the protocol is not TCP4, TCP6 or UNKNOWN")]
    V1Protocol,
    #[error(
        "invalid PROXY v2 header: the address block has {len} bytes, fewer than the {needed} its address family needs"
    )]
    V2AddressTooShort { len: u16, needed: u16 },
    #[error("invalid PROXY v2 header: command {command:#x} is neither LOCAL (0x0) nor PROXY (0x1)")]
    V2Command { command: u8 },
    #[error(
        "invalid PROXY v2 header: address family and transport byte {byte:#04x} has an unassigned family or transport"
    )]
    V2Family { byte: u8 },
    #[error(
        "invalid PROXY v2 header: the address block has {len} bytes, more than the limit of {max}"
    )]
    V2TooLong { len: u16, max: u16 },
    #[error("invalid PROXY v2 header: version {version} is not 2")]
    V2Version { version: u8 },
}

/// Parses the PROXY protocol header at the start of `buf`.
///
/// Returns `Ok(None)` while `buf` is a valid but incomplete start of a header: read more bytes
/// and call again with everything received so far. Returns `Ok(Some(header))` once the header
/// is complete; the client's data starts at `buf[header.len..]`. Anything that does not match
/// the specification exactly is an error, as soon as the bytes show it.
///
/// NOTE: version 2 TLVs are skipped unread, so a `PP2_TYPE_CRC32C` checksum is not verified.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(&first) if first == V2_SIGNATURE[0] => parse_v2(buf),
        Some(_) => parse_v1(buf),
    }
}

/// Returns `Ok(true)` when `buf` starts with all of `expected`, `Ok(false)` when `buf` is a
/// shorter prefix of it, and `NotProxy` otherwise.
fn starts_with_prefix(buf: &[u8], expected: &[u8]) -> Result<bool, ProxyError> {
    let checked = buf.len().min(expected.len());
    if buf.get(..checked) != expected.get(..checked) {
        return Err(ProxyError::NotProxy);
    }
    Ok(checked == expected.len())
}

/// Version 1: `PROXY <protocol> <source> <destination> <source port> <destination port>\r\n`
/// (specification §2.1).
fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if !starts_with_prefix(buf, V1_PREFIX)? {
        return Ok(None);
    }

    // §2.1: the receiver waits for CRLF, and declares the line invalid when the first 107
    // bytes contain none.
    let window = buf.get(..buf.len().min(V1_MAX_LEN)).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1LineTooLong);
        }
        return Ok(None);
    };

    // §2.1: a single CR or LF must not be taken as the end of the line.
    let Some(cr) = lf.checked_sub(1) else {
        return Err(ProxyError::V1LineEnding);
    };
    if window.get(cr) != Some(&b'\r') {
        return Err(ProxyError::V1LineEnding);
    }
    let line = window.get(V1_PREFIX.len()..cr).unwrap_or_default();
    let len = lf + 1;

    let mut fields = line.split(|&b| b == b' ');
    let protocol = fields.next().unwrap_or_default();
    let addresses = match protocol {
        // §2.1: for UNKNOWN the receiver ignores everything up to the CRLF.
        b"UNKNOWN" => None,
        b"TCP4" | b"TCP6" => {
            let rest: Vec<&[u8]> = fields.collect();
            let [source, destination, source_port, destination_port] = rest.as_slice() else {
                return Err(ProxyError::V1Fields);
            };
            if rest.iter().any(|field| field.is_empty()) {
                return Err(ProxyError::V1Fields);
            }
            let (source, destination) = if protocol == b"TCP4" {
                (
                    IpAddr::V4(parse_v1_address::<Ipv4Addr>(source)?),
                    IpAddr::V4(parse_v1_address::<Ipv4Addr>(destination)?),
                )
            } else {
                (
                    IpAddr::V6(parse_v1_address::<Ipv6Addr>(source)?),
                    IpAddr::V6(parse_v1_address::<Ipv6Addr>(destination)?),
                )
            };
            Some(ProxyAddresses {
                source: SocketAddr::new(source, parse_v1_port(source_port)?),
                destination: SocketAddr::new(destination, parse_v1_port(destination_port)?),
            })
        }
        _ if protocol.is_empty() => return Err(ProxyError::V1Fields),
        _ => return Err(ProxyError::V1Protocol),
    };

    Ok(Some(ProxyHeader {
        version: Version::V1,
        len,
        addresses,
    }))
}

/// Parses a version 1 address. The standard library's parsers accept exactly the canonical
/// forms of §2.1: IPv4 as four decimal numbers without leading zeros, IPv6 as hex groups with
/// at most one `::`.
fn parse_v1_address<A: FromStr>(field: &[u8]) -> Result<A, ProxyError> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ProxyError::V1Address)
}

/// Parses a version 1 port: 1 to 5 decimal digits, no leading zero, at most 65535 (§2.1).
fn parse_v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let digits_only = !field.is_empty() && field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    let leading_zero = field.len() > 1 && field.first() == Some(&b'0');
    if !digits_only || leading_zero {
        return Err(ProxyError::V1Port);
    }
    let value = field
        .iter()
        .fold(0u32, |value, &digit| value * 10 + u32::from(digit - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::V1Port)
}

/// Version 2: signature, version and command, family and transport, block length, then the
/// address block and TLVs (specification §2.2). Each fixed byte is checked as soon as it
/// arrives.
fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if !starts_with_prefix(buf, &V2_SIGNATURE)? {
        return Ok(None);
    }

    // §2.2: the high nibble of byte 13 is the version and must be 2; the low nibble is the
    // command, LOCAL or PROXY, and any other value drops the connection.
    let Some(&version_command) = buf.get(12) else {
        return Ok(None);
    };
    let version = version_command >> 4;
    if version != 2 {
        return Err(ProxyError::V2Version { version });
    }
    let command = version_command & 0x0F;
    if command != V2_LOCAL && command != V2_PROXY {
        return Err(ProxyError::V2Command { command });
    }

    // §2.2: with LOCAL the receiver ignores the family and the address block entirely.
    let Some(&family_transport) = buf.get(13) else {
        return Ok(None);
    };
    let family = family_transport >> 4;
    let transport = family_transport & 0x0F;
    if command == V2_PROXY && (family > FAMILY_UNIX || transport > TRANSPORT_DGRAM) {
        return Err(ProxyError::V2Family {
            byte: family_transport,
        });
    }

    let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let block_len = u16::from_be_bytes([high, low]);
    if block_len > V2_MAX_BLOCK_LEN {
        return Err(ProxyError::V2TooLong {
            len: block_len,
            max: V2_MAX_BLOCK_LEN,
        });
    }
    let needed = match (command, family) {
        (V2_PROXY, FAMILY_INET) => V2_INET_BLOCK,
        (V2_PROXY, FAMILY_INET6) => V2_INET6_BLOCK,
        (V2_PROXY, FAMILY_UNIX) => V2_UNIX_BLOCK,
        _ => 0,
    };
    if block_len < needed {
        return Err(ProxyError::V2AddressTooShort {
            len: block_len,
            needed,
        });
    }

    // §2.2: the header is always exactly 16 bytes plus the block length, TLVs included.
    let len = V2_FIXED_LEN + usize::from(block_len);
    let Some(block) = buf.get(V2_FIXED_LEN..len) else {
        return Ok(None);
    };

    // §2.2: a receiver may fall back to the real connection endpoints for the valid
    // combinations it does not use: unspecified family or transport, UNIX sockets, and
    // datagrams, which cannot describe this TCP connection.
    let addresses = match (command, family, transport) {
        (V2_PROXY, FAMILY_INET, TRANSPORT_STREAM) => v2_inet_addresses(block),
        (V2_PROXY, FAMILY_INET6, TRANSPORT_STREAM) => v2_inet6_addresses(block),
        _ => None,
    };

    Ok(Some(ProxyHeader {
        version: Version::V2,
        len,
        addresses,
    }))
}

/// Reads an IPv4 address block: source and destination addresses, then ports, big-endian.
fn v2_inet_addresses(block: &[u8]) -> Option<ProxyAddresses> {
    let source: [u8; 4] = block.get(0..4)?.try_into().ok()?;
    let destination: [u8; 4] = block.get(4..8)?.try_into().ok()?;
    let source_port = u16::from_be_bytes(block.get(8..10)?.try_into().ok()?);
    let destination_port = u16::from_be_bytes(block.get(10..12)?.try_into().ok()?);
    Some(ProxyAddresses {
        source: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(source)), source_port),
        destination: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(destination)), destination_port),
    })
}

/// Reads an IPv6 address block: source and destination addresses, then ports, big-endian.
fn v2_inet6_addresses(block: &[u8]) -> Option<ProxyAddresses> {
    let source: [u8; 16] = block.get(0..16)?.try_into().ok()?;
    let destination: [u8; 16] = block.get(16..32)?.try_into().ok()?;
    let source_port = u16::from_be_bytes(block.get(32..34)?.try_into().ok()?);
    let destination_port = u16::from_be_bytes(block.get(34..36)?.try_into().ok()?);
    Some(ProxyAddresses {
        source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(source)), source_port),
        destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(destination)), destination_port),
    })
}

/// An IP network in CIDR notation, such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    /// Leading bits that must match. INVARIANT: at most 32 for IPv4 and 128 for IPv6.
    prefix_len: u8,
}

impl IpNet {
    /// Creates the network of `addr` with `prefix_len` leading bits, or `None` when
    /// `prefix_len` is above 32 for IPv4 or 128 for IPv6. Bits of `addr` past the prefix are
    /// ignored.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix_len <= max).then_some(Self { addr, prefix_len })
    }

    /// Returns whether `ip` is in this network. An IPv4 network also contains the
    /// IPv4-mapped IPv6 form of its addresses (`::ffff:10.1.2.3`), which a dual-stack socket
    /// reports for IPv4 clients, and an IPv6 network written in mapped form (`::ffff:0:0/96`)
    /// contains the plain IPv4 addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self.addr {
            IpAddr::V4(net) => match ip.to_canonical() {
                IpAddr::V4(ip) => {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(self.prefix_len))
                        .unwrap_or(0);
                    u32::from(net) & mask == u32::from(ip) & mask
                }
                IpAddr::V6(_) => false,
            },
            IpAddr::V6(net) => {
                let ip = match ip {
                    IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                    IpAddr::V6(ip) => ip,
                };
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
        }
    }
}

impl FromStr for IpNet {
    type Err = ProxyError;

    /// Parses `address/prefix_len`, or a bare address as a network of one address.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = match text.split_once('/') {
            Some((addr, prefix_len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| ProxyError::CidrInvalid)?;
                let prefix_len: u8 = prefix_len.parse().map_err(|_| ProxyError::CidrInvalid)?;
                (addr, prefix_len)
            }
            None => {
                let addr: IpAddr = text.parse().map_err(|_| ProxyError::CidrInvalid)?;
                let full = if addr.is_ipv4() { 32 } else { 128 };
                (addr, full)
            }
        };
        Self::new(addr, prefix_len).ok_or(ProxyError::CidrInvalid)
    }
}

/// Returns the client address behind trusted proxies, from an `X-Forwarded-For` value.
///
/// Each proxy appends the address it received the connection from, so the list grows to the
/// right and only entries added by trusted proxies can be believed. The walk starts at the
/// socket peer: when the peer is not in `trusted`, its address is the client and the header
/// is ignored (anyone can send one). Otherwise entries are read from the right, skipping
/// trusted proxies, and the first untrusted address is the client. When every entry is
/// trusted, the leftmost is returned. Empty entries are skipped. An entry that is not an IP
/// address ends the walk, and the nearest address already checked (a trusted proxy) is
/// returned.
///
/// `lines` are the values of the `X-Forwarded-For` field lines in the order received. The
/// walk goes on from the start of one line to the end of the line before, as if the lines
/// were joined with commas (RFC 9110 §5.3). Entries may carry a port (`203.0.113.7:5000`, `[2001:db8::1]:443`). The result
/// is in canonical form: an IPv4-mapped IPv6 address comes back as IPv4.
pub fn client_ip_from_forwarded_for(lines: &[&[u8]], peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));

    let mut nearest = peer.to_canonical();
    if !is_trusted(nearest) {
        return nearest;
    }
    let entries = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(|&b| b == b','));
    for entry in entries {
        // RFC 9110 §5.6.1: empty list elements are ignored.
        if entry.trim_ascii().is_empty() {
            continue;
        }
        let Some(ip) = parse_forwarded_entry(entry) else {
            return nearest;
        };
        if !is_trusted(ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// Parses one `X-Forwarded-For` entry: an IP address, optionally with a port, between
/// optional spaces or tabs.
fn parse_forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let text = text.trim_matches([' ', '\t']);
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed
        .parse::<Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn v2(version_command: u8, family_transport: u8, block: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(version_command);
        header.push(family_transport);
        let len = u16::try_from(block.len()).expect("test block fits the length field");
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(block);
        header
    }

    fn socket(text: &str) -> SocketAddr {
        text.parse().expect("test socket address")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test IP address")
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("test network")
    }

    fn addresses(source: &str, destination: &str) -> Option<ProxyAddresses> {
        Some(ProxyAddresses {
            source: socket(source),
            destination: socket(destination),
        })
    }

    /// Valid headers with the result expected for each.
    fn valid_headers() -> Vec<(&'static str, Vec<u8>, Version, Option<ProxyAddresses>)> {
        let max_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let mut inet_block = vec![192, 0, 2, 1, 198, 51, 100, 7];
        inet_block.extend_from_slice(&56_324u16.to_be_bytes());
        inet_block.extend_from_slice(&443u16.to_be_bytes());
        let mut inet6_block = Ipv6Addr::from_str("2001:db8::1")
            .expect("v6")
            .octets()
            .to_vec();
        inet6_block.extend_from_slice(&Ipv6Addr::from_str("2001:db8::2").expect("v6").octets());
        inet6_block.extend_from_slice(&1u16.to_be_bytes());
        inet6_block.extend_from_slice(&65_535u16.to_be_bytes());
        let mut inet_with_tlvs = inet_block.clone();
        inet_with_tlvs.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]); // PP2_TYPE_NOOP
        inet_with_tlvs.extend_from_slice(&[0x02, 0x00, 0x04, b'h', b'o', b's', b't']);

        vec![
            (
                "v1 spec example",
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
                Version::V1,
                addresses("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            (
                "v1 longest TCP4",
                b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_vec(),
                Version::V1,
                addresses("255.255.255.255:65535", "255.255.255.255:65535"),
            ),
            (
                "v1 TCP6 port 0",
                b"PROXY TCP6 2001:db8::1 ::1 0 8080\r\n".to_vec(),
                Version::V1,
                addresses("[2001:db8::1]:0", "[::1]:8080"),
            ),
            (
                "v1 longest TCP6",
                format!("PROXY TCP6 {max_v6} {max_v6} 65535 65535\r\n").into_bytes(),
                Version::V1,
                addresses(&format!("[{max_v6}]:65535"), &format!("[{max_v6}]:65535")),
            ),
            (
                "v1 UNKNOWN short form",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Version::V1,
                None,
            ),
            (
                "v1 UNKNOWN worst case of 107 bytes",
                format!("PROXY UNKNOWN {max_v6} {max_v6} 65535 65535\r\n").into_bytes(),
                Version::V1,
                None,
            ),
            (
                "v1 UNKNOWN with ignored junk",
                b"PROXY UNKNOWN whatever \x01 here\r\n".to_vec(),
                Version::V1,
                None,
            ),
            (
                "v2 LOCAL without block",
                v2(0x20, 0x00, &[]),
                Version::V2,
                None,
            ),
            (
                "v2 LOCAL ignores family and block",
                v2(0x20, 0xFF, &[1, 2, 3, 4, 5]),
                Version::V2,
                None,
            ),
            (
                "v2 PROXY TCP over IPv4",
                v2(0x21, 0x11, &inet_block),
                Version::V2,
                addresses("192.0.2.1:56324", "198.51.100.7:443"),
            ),
            (
                "v2 PROXY TCP over IPv4 with TLVs",
                v2(0x21, 0x11, &inet_with_tlvs),
                Version::V2,
                addresses("192.0.2.1:56324", "198.51.100.7:443"),
            ),
            (
                "v2 PROXY TCP over IPv6",
                v2(0x21, 0x21, &inet6_block),
                Version::V2,
                addresses("[2001:db8::1]:1", "[2001:db8::2]:65535"),
            ),
            ("v2 PROXY UNSPEC", v2(0x21, 0x00, &[]), Version::V2, None),
            (
                "v2 PROXY UDP over IPv4 falls back",
                v2(0x21, 0x12, &inet_block),
                Version::V2,
                None,
            ),
            (
                "v2 PROXY IPv4 with unspecified transport falls back",
                v2(0x21, 0x10, &inet_block),
                Version::V2,
                None,
            ),
            (
                "v2 PROXY UNIX stream falls back",
                v2(0x21, 0x31, &[0; 216]),
                Version::V2,
                None,
            ),
            (
                "v2 largest block",
                v2(0x21, 0x11, &[7; V2_MAX_BLOCK_LEN as usize]),
                Version::V2,
                addresses("7.7.7.7:1799", "7.7.7.7:1799"),
            ),
        ]
    }

    #[test]
    fn parse_valid_headers_return_addresses_and_length() {
        for (name, header, version, expected) in valid_headers() {
            let mut stream = header.clone();
            stream.extend_from_slice(b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n");
            let parsed = parse(&stream);
            assert_eq!(
                parsed,
                Ok(Some(ProxyHeader {
                    version,
                    len: header.len(),
                    addresses: expected,
                })),
                "{name}"
            );
            assert_eq!(parse(&header), parsed, "{name}: without trailing data");
        }
    }

    #[test]
    fn parse_every_prefix_of_valid_header_needs_more() {
        for (name, header, _, _) in valid_headers() {
            for end in 0..header.len() {
                assert_eq!(
                    parse(&header[..end]),
                    Ok(None),
                    "{name}: prefix of {end} bytes"
                );
            }
        }
    }

    #[test]
    fn parse_v1_longest_lines_match_the_specification() {
        let max_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let worst = format!("PROXY UNKNOWN {max_v6} {max_v6} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX_LEN);
        let tcp6 = format!("PROXY TCP6 {max_v6} {max_v6} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
    }

    #[test]
    fn parse_invalid_headers_return_precise_error() {
        let mut no_crlf = b"PROXY UNKNOWN ".to_vec();
        no_crlf.resize(V1_MAX_LEN, b'a');
        let mut lf_at_108 = no_crlf.clone();
        lf_at_108.extend_from_slice(b"\r\n");

        let cases: Vec<(&str, Vec<u8>, ProxyError)> = vec![
            (
                "HTTP request",
                b"GET / HTTP/1.1\r\n".to_vec(),
                ProxyError::NotProxy,
            ),
            ("lowercase v1", b"proxy TCP4".to_vec(), ProxyError::NotProxy),
            ("v1 typo", b"PROXX".to_vec(), ProxyError::NotProxy),
            (
                "v1 without space",
                b"PROXYTCP4".to_vec(),
                ProxyError::NotProxy,
            ),
            (
                "v2 bad signature",
                b"\r\n\r\n\x00\r\nQUIX".to_vec(),
                ProxyError::NotProxy,
            ),
            ("bare CR", b"\r\nGET".to_vec(), ProxyError::NotProxy),
            (
                "v1 no CRLF in 107 bytes",
                no_crlf,
                ProxyError::V1LineTooLong,
            ),
            (
                "v1 CRLF after 107 bytes",
                lf_at_108,
                ProxyError::V1LineTooLong,
            ),
            (
                "v1 lone LF",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
                ProxyError::V1LineEnding,
            ),
            (
                "v1 UNKNOWN lone LF",
                b"PROXY UNKNOWN\n".to_vec(),
                ProxyError::V1LineEnding,
            ),
            (
                "v1 empty protocol",
                b"PROXY \r\n".to_vec(),
                ProxyError::V1Fields,
            ),
            (
                "v1 missing port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(),
                ProxyError::V1Fields,
            ),
            (
                "v1 extra field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
                ProxyError::V1Fields,
            ),
            (
                "v1 trailing space",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n".to_vec(),
                ProxyError::V1Fields,
            ),
            (
                "v1 double space",
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n".to_vec(),
                ProxyError::V1Fields,
            ),
            (
                "v1 tab separator",
                b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                ProxyError::V1Protocol,
            ),
            (
                "v1 UDP4",
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                ProxyError::V1Protocol,
            ),
            (
                "v1 lowercase protocol",
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                ProxyError::V1Protocol,
            ),
            (
                "v1 UNKNOWNX",
                b"PROXY UNKNOWNX\r\n".to_vec(),
                ProxyError::V1Protocol,
            ),
            (
                "v1 TCP4 with IPv6",
                b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
                ProxyError::V1Address,
            ),
            (
                "v1 TCP6 with IPv4",
                b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                ProxyError::V1Address,
            ),
            (
                "v1 IPv4 leading zero",
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                ProxyError::V1Address,
            ),
            (
                "v1 IPv4 octet above 255",
                b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n".to_vec(),
                ProxyError::V1Address,
            ),
            (
                "v1 IPv6 two double colons",
                b"PROXY TCP6 1::2::3 ::1 1 2\r\n".to_vec(),
                ProxyError::V1Address,
            ),
            (
                "v1 non-UTF-8 address",
                b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n".to_vec(),
                ProxyError::V1Address,
            ),
            (
                "v1 port above 65535",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
                ProxyError::V1Port,
            ),
            (
                "v1 port leading zero",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n".to_vec(),
                ProxyError::V1Port,
            ),
            (
                "v1 port with plus sign",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_vec(),
                ProxyError::V1Port,
            ),
            (
                "v1 port six digits",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 000002\r\n".to_vec(),
                ProxyError::V1Port,
            ),
            (
                "v1 port with letter",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 8a 2\r\n".to_vec(),
                ProxyError::V1Port,
            ),
            (
                "v2 version 1",
                v2(0x11, 0x11, &[0; 12]),
                ProxyError::V2Version { version: 1 },
            ),
            (
                "v2 version 3",
                v2(0x31, 0x11, &[0; 12]),
                ProxyError::V2Version { version: 3 },
            ),
            (
                "v2 command 2",
                v2(0x22, 0x11, &[0; 12]),
                ProxyError::V2Command { command: 2 },
            ),
            (
                "v2 family 4",
                v2(0x21, 0x41, &[0; 12]),
                ProxyError::V2Family { byte: 0x41 },
            ),
            (
                "v2 transport 3",
                v2(0x21, 0x13, &[0; 12]),
                ProxyError::V2Family { byte: 0x13 },
            ),
            (
                "v2 IPv4 block too short",
                v2(0x21, 0x11, &[0; 11]),
                ProxyError::V2AddressTooShort {
                    len: 11,
                    needed: 12,
                },
            ),
            (
                "v2 IPv6 block too short",
                v2(0x21, 0x21, &[0; 12]),
                ProxyError::V2AddressTooShort {
                    len: 12,
                    needed: 36,
                },
            ),
            (
                "v2 UNIX block too short",
                v2(0x21, 0x32, &[0; 100]),
                ProxyError::V2AddressTooShort {
                    len: 100,
                    needed: 216,
                },
            ),
        ];
        for (name, input, expected) in cases {
            assert_eq!(parse(&input), Err(expected), "{name}");
        }
    }

    #[test]
    fn parse_v2_errors_before_the_block_arrives() {
        let mut too_long = V2_SIGNATURE.to_vec();
        too_long.extend_from_slice(&[0x21, 0x11]);
        too_long.extend_from_slice(&(V2_MAX_BLOCK_LEN + 1).to_be_bytes());
        assert_eq!(
            parse(&too_long),
            Err(ProxyError::V2TooLong {
                len: V2_MAX_BLOCK_LEN + 1,
                max: V2_MAX_BLOCK_LEN,
            })
        );

        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.push(0x10);
        assert_eq!(
            parse(&bad_version),
            Err(ProxyError::V2Version { version: 1 })
        );

        let mut bad_family = V2_SIGNATURE.to_vec();
        bad_family.extend_from_slice(&[0x21, 0xF1]);
        assert_eq!(parse(&bad_family), Err(ProxyError::V2Family { byte: 0xF1 }));

        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x21, 0x00, 0x0C]);
        assert_eq!(
            parse(&short),
            Err(ProxyError::V2AddressTooShort {
                len: 12,
                needed: 36
            })
        );
    }

    #[test]
    fn parse_v1_lone_lf_rejected_early() {
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
            Err(ProxyError::V1LineEnding)
        );
        // Up to 106 bytes without a line feed may still become a valid header.
        let mut partial = b"PROXY UNKNOWN ".to_vec();
        partial.resize(V1_MAX_LEN - 1, b'a');
        assert_eq!(parse(&partial), Ok(None));
    }

    #[test]
    fn proxy_error_display_names_the_fix() {
        assert!(ProxyError::NotProxy.to_string().contains("only proxies"));
        let too_long = ProxyError::V2TooLong {
            len: 5000,
            max: 4096,
        };
        assert!(too_long.to_string().contains("5000"));
        assert!(too_long.to_string().contains("4096"));
        assert!(ProxyError::CidrInvalid.to_string().contains("10.0.0.0/8"));
    }

    proptest! {
        #[test]
        fn parse_arbitrary_bytes_never_overruns(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some(header)) = parse(&bytes) {
                prop_assert!(header.len <= bytes.len());
                prop_assert!(header.len > 0);
            }
        }

        #[test]
        fn parse_mutated_valid_header_never_overruns(
            choice in any::<prop::sample::Index>(),
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let headers = valid_headers();
            let (_, mut header, _, _) = headers[choice.index(headers.len())].clone();
            let at = position.index(header.len());
            header[at] = byte;
            if let Ok(Some(parsed)) = parse(&header) {
                prop_assert!(parsed.len <= header.len());
            }
        }
    }

    #[test]
    fn ip_net_contains_checks_prefix_bits() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.1.2.3/8", "10.9.9.9", true),
            ("192.168.1.7/32", "192.168.1.7", true),
            ("192.168.1.7/32", "192.168.1.8", false),
            ("0.0.0.0/0", "203.0.113.1", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "10.0.0.1", true),
            ("::1/128", "::1", true),
            ("::1/128", "::2", false),
            ("::ffff:0:0/96", "192.0.2.1", true),
            ("2001:db8::/32", "10.0.0.1", false),
            ("192.0.2.9", "192.0.2.9", true),
            ("192.0.2.9", "192.0.2.10", false),
        ];
        for (network, address, expected) in cases {
            assert_eq!(
                net(network).contains(ip(address)),
                expected,
                "{network} contains {address}"
            );
        }
    }

    #[test]
    fn ip_net_parse_rejects_invalid_text() {
        for text in [
            "",
            "10.0.0.0/",
            "/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0/8",
            "localhost",
            "10.0.0.0/8/8",
            "10.0.0.0 /8",
        ] {
            assert_eq!(
                text.parse::<IpNet>(),
                Err(ProxyError::CidrInvalid),
                "{text:?}"
            );
        }
        assert!(IpNet::new(ip("10.0.0.0"), 33).is_none());
        assert!(IpNet::new(ip("::"), 128).is_some());
    }

    #[test]
    fn forwarded_for_untrusted_peer_is_the_client() {
        let trusted = [net("10.0.0.0/8")];
        let client =
            client_ip_from_forwarded_for(&[&b"203.0.113.7"[..]], ip("198.51.100.1"), &trusted);
        assert_eq!(client, ip("198.51.100.1"));
    }

    #[test]
    fn forwarded_for_skips_trusted_hops() {
        let trusted = [net("10.0.0.0/8"), net("2001:db8:ffff::/48")];
        let peer = ip("10.0.0.1");
        let cases: [(&[u8], &str); 14] = [
            (b"203.0.113.7", "203.0.113.7"),
            (b"203.0.113.7, 10.0.0.2", "203.0.113.7"),
            (b"1.1.1.1, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
            (b"1.1.1.1,203.0.113.7,10.0.0.2", "203.0.113.7"),
            (b" \t203.0.113.7 \t, 10.0.0.2 ", "203.0.113.7"),
            (b"10.0.0.3, 10.0.0.2", "10.0.0.3"),
            (b"", "10.0.0.1"),
            (b"203.0.113.7, garbage", "10.0.0.1"),
            (b"1.1.1.1, garbage, 10.0.0.2", "10.0.0.2"),
            (b"203.0.113.7, ", "203.0.113.7"),
            (b"203.0.113.7, , 10.0.0.2,", "203.0.113.7"),
            (b"203.0.113.7:5000", "203.0.113.7"),
            (b"[2001:db8::7]:443, 2001:db8:ffff::2", "2001:db8::7"),
            (b"[2001:db8::7], ::ffff:10.0.0.9", "2001:db8::7"),
        ];
        for (header, expected) in cases {
            assert_eq!(
                client_ip_from_forwarded_for(&[header], peer, &trusted),
                ip(expected),
                "X-Forwarded-For: {}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn forwarded_for_mapped_peer_matches_ipv4_network() {
        let trusted = [net("10.0.0.0/8")];
        let client =
            client_ip_from_forwarded_for(&[&b"203.0.113.7"[..]], ip("::ffff:10.0.0.1"), &trusted);
        assert_eq!(client, ip("203.0.113.7"));

        let untrusted =
            client_ip_from_forwarded_for(&[&b"203.0.113.7"[..]], ip("::ffff:192.0.2.1"), &trusted);
        assert_eq!(untrusted, ip("192.0.2.1"), "canonical IPv4 form");
    }

    #[test]
    fn forwarded_for_non_utf8_entry_ends_walk() {
        let trusted = [net("10.0.0.0/8")];
        let client = client_ip_from_forwarded_for(
            &[&b"203.0.113.7, \xff\xfe"[..]],
            ip("10.0.0.1"),
            &trusted,
        );
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_for_walk_crosses_field_lines() {
        let trusted = [net("10.0.0.0/8")];
        let peer = ip("10.0.0.1");
        let cases: [(&[&[u8]], &str); 7] = [
            // The nearest proxy added its own line with only trusted hops in it.
            (
                &[b"198.51.100.9", b"203.0.113.7", b"10.0.0.2"],
                "203.0.113.7",
            ),
            (&[b"203.0.113.7, 10.0.0.3", b"10.0.0.2"], "203.0.113.7"),
            (&[b"203.0.113.7", b"198.51.100.9, 10.0.0.2"], "198.51.100.9"),
            (&[b"10.0.0.4", b"10.0.0.3", b"10.0.0.2"], "10.0.0.4"),
            (&[b"garbage", b"10.0.0.2"], "10.0.0.2"),
            (&[b"203.0.113.7", b""], "203.0.113.7"),
            (&[], "10.0.0.1"),
        ];
        for (lines, expected) in cases {
            assert_eq!(
                client_ip_from_forwarded_for(lines, peer, &trusted),
                ip(expected),
                "X-Forwarded-For lines: {lines:?}"
            );
        }
    }

    #[test]
    fn forwarded_for_no_trusted_networks_returns_peer() {
        let client = client_ip_from_forwarded_for(&[&b"203.0.113.7"[..]], ip("10.0.0.1"), &[]);
        assert_eq!(client, ip("10.0.0.1"));
    }
}
