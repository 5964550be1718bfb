package loader

// RetransOrder is the order the retransmit hook's flavours are tried in:
// cheapest first. All three see the same event (tcp:tcp_retransmit_skb),
// whose record carries the socket and the skb on every kernel since 4.15.
var RetransOrder = []Mode{ModeTpBtf, ModeRawTp, ModeTracepoint}

// RetransHook names the kernel hook of the retransmit program in flavour m.
func RetransHook(m Mode) string {
	switch m {
	case ModeTpBtf:
		return "tp_btf/tcp_retransmit_skb"
	case ModeRawTp:
		return "raw_tp/tcp_retransmit_skb"
	case ModeTracepoint:
		return "tracepoint/tcp/tcp_retransmit_skb"
	}
	return string(m)
}

// SettleHook names the state-change program attached beside the
// retransmit one in flavour m.
func SettleHook(m Mode) string {
	switch m {
	case ModeTpBtf:
		return "tp_btf/inet_sock_set_state"
	case ModeRawTp:
		return "raw_tp/inet_sock_set_state"
	case ModeTracepoint:
		return "tracepoint/sock/inet_sock_set_state"
	}
	return string(m)
}
