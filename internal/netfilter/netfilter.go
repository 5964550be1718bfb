// Package netfilter parses the address filters shared by the receiver's
// config and the tcprtt command, with one set of rules.
package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ParsePrefix accepts an IP (taken as a /32 or /128) or a CIDR without
// host bits, IPv4 or IPv6. An IPv4-mapped IPv6 prefix becomes the IPv4
// one, as the program counts v4-mapped sockets as IPv4. The error says
// what is wrong with s without repeating it, for the caller to prefix
// with the key and the value.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, errors.New("is not a valid CIDR (want e.g. 10.0.0.0/8 or 2001:db8::/32)")
		}
		if p.Masked() != p {
			return p, fmt.Errorf("has host bits set; did you mean %s?", p.Masked())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, errors.New("is not a valid IP address or CIDR")
		}
		if a.Zone() != "" { // PrefixFrom would silently drop it
			return p, errors.New("has an IPv6 zone, which cannot be matched")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p, nil
}
