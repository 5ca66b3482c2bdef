package codegen

import (
	"strconv"
	"strings"
	"unicode"
)

// goInitialisms are written in capitals in Go names (InvoiceID, not
// InvoiceId), as Go's own style does.
var goInitialisms = map[string]bool{
	"API": true, "ASCII": true, "CPU": true, "CSS": true, "DNS": true, "EOF": true, "GUID": true, "HTML": true,
	"HTTP": true, "HTTPS": true, "ID": true, "IP": true, "JSON": true, "JWT": true, "SKU": true, "SQL": true,
	"SSH": true, "TCP": true, "TLS": true, "TTL": true, "UDP": true, "UI": true, "UID": true, "URI": true,
	"URL": true, "UTF8": true, "UUID": true, "VAT": true, "XML": true,
}

// words splits s into words: at every rune that is neither a letter nor a
// digit, and before an upper-case letter that follows a lower-case one
// (invoiceId: invoice, Id).
func words(s string) []string {
	var out []string
	var cur []rune
	flush := func() {
		if len(cur) > 0 {
			out = append(out, string(cur))
			cur = cur[:0]
		}
	}
	var prev rune
	for _, r := range s {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case unicode.IsUpper(r) && (unicode.IsLower(prev) || unicode.IsDigit(prev)):
			flush()
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
		prev = r
	}
	flush()
	return out
}

// pascal joins the words of s, each capitalized (the rest lower-cased when
// the word is all capitals among others, so that "PAID_LATE" reads PaidLate
// while "EUR" stays EUR), with Go's
// initialisms in capitals when goStyle. The result may be empty or start
// with a digit: callers prefix it.
func pascal(s string, goStyle bool) string {
	var b strings.Builder
	ws := words(s)
	for _, w := range ws {
		up := strings.ToUpper(w)
		if goStyle && goInitialisms[up] {
			b.WriteString(up)
			continue
		}
		rs := []rune(w)
		if up == w && len(ws) > 1 {
			rs = []rune(strings.ToLower(w))
		}
		rs[0] = unicode.ToUpper(rs[0])
		b.WriteString(string(rs))
	}
	return b.String()
}

// identifier makes an exported identifier of s: its PascalCase, or fallback
// when there is none; prefixed with "X" when it would not start with an
// upper-case letter (a digit, or a script without case).
func identifier(s, fallback string, goStyle bool) string {
	id := pascal(s, goStyle)
	if id == "" {
		id = fallback
	}
	if r := []rune(id)[0]; !unicode.IsUpper(r) {
		id = "X" + id
	}
	return id
}

// namer hands out distinct names in one scope: a name already given gets
// 2, 3... appended.
type namer struct {
	used map[string]bool
}

func newNamer(reserved ...string) *namer {
	n := &namer{used: map[string]bool{}}
	for _, r := range reserved {
		n.used[r] = true
	}
	return n
}

// take returns want, or want with the smallest number from 2 up that makes
// it unused, and marks it used.
func (n *namer) take(want string) string {
	name := want
	for i := 2; n.used[name]; i++ {
		name = want + strconv.Itoa(i)
	}
	n.used[name] = true
	return name
}
