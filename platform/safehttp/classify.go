package safehttp

import (
	"net/netip"

	"code.dny.dev/ssrf"
)

// Classes of a refusal: the Class of a RefusedError. The address classes are
// what Classify returns; the others name what is wrong with a URL.
const (
	ClassUnspecified   = "unspecified"   // 0.0.0.0/8, ::
	ClassLoopback      = "loopback"      // 127.0.0.0/8, ::1
	ClassPrivate       = "private"       // RFC 1918, fc00::/7, fec0::/10
	ClassLinkLocal     = "link-local"    // 169.254.0.0/16, fe80::/10
	ClassSharedNAT     = "shared-nat"    // 100.64.0.0/10 (carrier-grade NAT)
	ClassMulticast     = "multicast"     // 224.0.0.0/4, ff00::/8
	ClassBroadcast     = "broadcast"     // 255.255.255.255
	ClassDocumentation = "documentation" // TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20
	ClassBenchmarking  = "benchmarking"  // 198.18.0.0/15, 2001:2::/48
	ClassMetadata      = "metadata"      // cloud instance metadata services
	ClassTransition    = "transition"    // 6to4, Teredo, local NAT64, IPv4-compatible IPv6
	ClassZone          = "zone"          // an IPv6 address with a zone (fe80::1%eth0)
	ClassReserved      = "reserved"      // any other special-purpose address

	ClassMalformed     = "malformed"      // the URL does not parse, or its host is not a host name
	ClassScheme        = "scheme"         // a scheme other than http and https
	ClassHTTPSRequired = "https-required" // http:// to a host the policy does not open
	ClassUserinfo      = "userinfo"       // user name or password in the URL
	ClassPort          = "port"           // a port that is not a number in 1..65535
)

// phrases say what an address class is, in words a customer understands.
var phrases = map[string]string{
	ClassUnspecified:   "an unspecified address",
	ClassLoopback:      "a loopback address",
	ClassPrivate:       "a private address",
	ClassLinkLocal:     "a link-local address",
	ClassSharedNAT:     "a shared (carrier-grade NAT) address",
	ClassMulticast:     "a multicast address",
	ClassBroadcast:     "a broadcast address",
	ClassDocumentation: "a documentation address",
	ClassBenchmarking:  "a benchmarking address",
	ClassMetadata:      "a cloud metadata address",
	ClassTransition:    "an IPv6 transition address (6to4, Teredo or NAT64)",
	ClassZone:          "a zone-scoped address",
	ClassReserved:      "a reserved or special-purpose address",
}

// guardian is the verdict: code.dny.dev/ssrf's deny lists follow the IANA
// IPv4 and IPv6 special-purpose registries (and refuse all IPv6 outside
// 2000::/3). Ports and networks are checked elsewhere, so it checks addresses
// only. The tables below only name what it refuses.
var guardian = ssrf.New(ssrf.WithAnyPort(), ssrf.WithAnyNetwork())

// metadata are the addresses of cloud instance metadata services. Some are
// inside a range refused anyway (169.254.0.0/16, fc00::/7, 100.64.0.0/10);
// they are named on their own because reaching one is the point of most SSRF
// attacks. 168.63.129.16 (Azure's WireServer) is a public address that only
// means something inside Azure, so it is refused explicitly.
var metadata = map[netip.Addr]bool{
	netip.MustParseAddr("169.254.169.254"): true, // AWS, GCP, Azure, OpenStack, DigitalOcean, ...
	netip.MustParseAddr("169.254.170.2"):   true, // AWS ECS task metadata
	netip.MustParseAddr("fd00:ec2::254"):   true, // AWS IMDS over IPv6
	netip.MustParseAddr("100.100.100.200"): true, // Alibaba Cloud
	netip.MustParseAddr("192.0.0.192"):     true, // Oracle Cloud
	netip.MustParseAddr("168.63.129.16"):   true, // Azure WireServer
}

type named struct {
	prefix netip.Prefix
	class  string
}

// names maps the refused ranges to a class, most specific first. An address
// refused by the guardian and matched by none of these is ClassReserved.
var names = []named{
	{netip.MustParsePrefix("255.255.255.255/32"), ClassBroadcast},
	{netip.MustParsePrefix("0.0.0.0/8"), ClassUnspecified},
	{netip.MustParsePrefix("127.0.0.0/8"), ClassLoopback},
	{netip.MustParsePrefix("10.0.0.0/8"), ClassPrivate},
	{netip.MustParsePrefix("172.16.0.0/12"), ClassPrivate},
	{netip.MustParsePrefix("192.168.0.0/16"), ClassPrivate},
	{netip.MustParsePrefix("169.254.0.0/16"), ClassLinkLocal},
	{netip.MustParsePrefix("100.64.0.0/10"), ClassSharedNAT},
	{netip.MustParsePrefix("224.0.0.0/4"), ClassMulticast},
	{netip.MustParsePrefix("192.0.2.0/24"), ClassDocumentation},
	{netip.MustParsePrefix("198.51.100.0/24"), ClassDocumentation},
	{netip.MustParsePrefix("203.0.113.0/24"), ClassDocumentation},
	{netip.MustParsePrefix("198.18.0.0/15"), ClassBenchmarking},
	{netip.MustParsePrefix("::/128"), ClassUnspecified},
	{netip.MustParsePrefix("::1/128"), ClassLoopback},
	{netip.MustParsePrefix("fc00::/7"), ClassPrivate},
	{netip.MustParsePrefix("fec0::/10"), ClassPrivate}, // deprecated site-local
	{netip.MustParsePrefix("fe80::/10"), ClassLinkLocal},
	{netip.MustParsePrefix("ff00::/8"), ClassMulticast},
	{netip.MustParsePrefix("2001:db8::/32"), ClassDocumentation},
	{netip.MustParsePrefix("3fff::/20"), ClassDocumentation},
	{netip.MustParsePrefix("2001:2::/48"), ClassBenchmarking},
	{netip.MustParsePrefix("2001::/32"), ClassTransition},      // Teredo
	{netip.MustParsePrefix("2002::/16"), ClassTransition},      // 6to4
	{netip.MustParsePrefix("64:ff9b:1::/48"), ClassTransition}, // local-use NAT64
	{netip.MustParsePrefix("::/96"), ClassTransition},          // IPv4-compatible (deprecated)
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96") // well-known NAT64 prefix (RFC 6052)
	sixToFour = netip.MustParsePrefix("2002::/16")
	teredo    = netip.MustParsePrefix("2001::/32")
	compat    = netip.MustParsePrefix("::/96")
)

// Classify says why an address must not be dialled by default: one of the
// address classes (ClassLoopback, ClassPrivate, ClassMetadata, ...), or "" for
// a public address. It ignores any allowlist; Policy applies one on top.
//
// An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is classified as the IPv4
// address it maps. An address of the well-known NAT64 prefix 64:ff9b::/96 is
// classified as the IPv4 address it embeds, so that IPv6-only hosts behind
// DNS64 can still reach public IPv4 receivers and never a private one. 6to4,
// Teredo and IPv4-compatible addresses are refused: as the class of the IPv4
// address they embed when that is refused, else as ClassTransition.
func Classify(a netip.Addr) string {
	if !a.IsValid() {
		return ClassReserved
	}
	if a.Zone() != "" {
		return ClassZone
	}
	a = a.Unmap()
	if metadata[a] {
		return ClassMetadata
	}
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			return Classify(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(a):
			return embedded(netip.AddrFrom4([4]byte(b[2:6])))
		case teredo.Contains(a):
			// The server address in clear, the client's obfuscated (inverted).
			if c := embedded(netip.AddrFrom4([4]byte(b[4:8]))); c != ClassTransition {
				return c
			}
			return embedded(netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}))
		case compat.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback():
			return embedded(netip.AddrFrom4([4]byte(b[12:16])))
		}
	}
	if guardian.SafeAddr(a) == nil {
		return ""
	}
	for _, n := range names {
		if n.prefix.Contains(a) {
			return n.class
		}
	}
	return ClassReserved
}

// embedded is the class of an IPv6 transition address embedding v4: the class
// of v4 if that is refused, else ClassTransition (refused all the same).
func embedded(v4 netip.Addr) string {
	if c := Classify(v4); c != "" {
		return c
	}
	return ClassTransition
}
