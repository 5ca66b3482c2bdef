package catalogview

import (
	"bytes"
	"strings"

	"go.yaml.in/yaml/v3"
)

// JSONToYAML turns a JSON document into block-style YAML with the same
// content and key order. (JSON is YAML, so the YAML parser reads it; only
// the styles change.)
func JSONToYAML(j []byte) ([]byte, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(j, &n); err != nil {
		return nil, err
	}
	blockStyle(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// blockStyle clears the flow and quoting styles the JSON syntax gave the
// nodes; the encoder still quotes strings that would otherwise read as
// another type ("true", "1.0").
func blockStyle(n *yaml.Node) {
	switch n.Kind {
	case yaml.MappingNode, yaml.SequenceNode:
		// Empty collections stay in flow style: {} and [].
		if len(n.Content) > 0 {
			n.Style = 0
		}
	case yaml.ScalarNode:
		n.Style = 0
		switch {
		case n.Tag == "!!str" && strings.Contains(n.Value, "\n"):
			n.Style = yaml.LiteralStyle
		case n.Tag == "!!str" && yaml11Bool[n.Value]:
			// YAML 1.1 readers would take these for booleans.
			n.Style = yaml.DoubleQuotedStyle
		}
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

var yaml11Bool = map[string]bool{}

func init() {
	for _, s := range strings.Fields("y yes on n no off") {
		yaml11Bool[s] = true
		yaml11Bool[strings.ToUpper(s)] = true
		yaml11Bool[strings.ToUpper(s[:1])+s[1:]] = true
	}
}
