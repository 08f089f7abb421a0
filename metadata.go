package keyledger

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// Limits on a key's metadata: it travels in every ledger event that sets
// it, sits in every node's table, and is returned by /v1/verify.
const (
	MaxMetadataBytes = 4096 // encoded, compact
	MaxMetadataDepth = 4    // the object itself is depth 1
	MaxMetadataKeys  = 64   // members of all objects together
	MaxMetadataKey   = 64   // bytes in one member name
)

// ValidateMetadata checks that raw is a JSON object within the limits and
// returns it compacted. null or empty means no metadata (nil).
func ValidateMetadata(raw []byte) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	if !utf8.Valid(raw) {
		return nil, Errorf(Invalid, "metadata must be UTF-8 JSON")
	}
	var v any
	if err := decodeNumbers(raw, &v); err != nil {
		return nil, Errorf(Invalid, "metadata must be a JSON object")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, Errorf(Invalid, "metadata must be a JSON object")
	}
	keys := 0
	if err := checkMetadata(obj, 1, &keys); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		return nil, Errorf(Invalid, "metadata must be a JSON object")
	}
	if out.Len() > MaxMetadataBytes {
		return nil, Errorf(Invalid, "metadata is %d bytes encoded; at most %d", out.Len(), MaxMetadataBytes)
	}
	if len(obj) == 0 {
		return nil, nil
	}
	return json.RawMessage(out.Bytes()), nil
}

func checkMetadata(v any, depth int, keys *int) error {
	switch x := v.(type) {
	case map[string]any:
		if depth > MaxMetadataDepth {
			return Errorf(Invalid, "metadata nests deeper than %d levels", MaxMetadataDepth)
		}
		for k, e := range x {
			*keys++
			if *keys > MaxMetadataKeys {
				return Errorf(Invalid, "metadata holds more than %d keys", MaxMetadataKeys)
			}
			if k == "" || len(k) > MaxMetadataKey {
				return Errorf(Invalid, "metadata keys must be 1 to %d bytes", MaxMetadataKey)
			}
			if err := checkMetadata(e, depth+1, keys); err != nil {
				return err
			}
		}
	case []any:
		if depth > MaxMetadataDepth {
			return Errorf(Invalid, "metadata nests deeper than %d levels", MaxMetadataDepth)
		}
		for _, e := range x {
			if err := checkMetadata(e, depth+1, keys); err != nil {
				return err
			}
		}
	}
	return nil
}

// MergePatch applies an RFC 7396 JSON merge patch to a metadata object:
// members set to null are removed, objects are merged recursively,
// anything else replaces. The result is checked with ValidateMetadata.
func MergePatch(doc json.RawMessage, patch []byte) (json.RawMessage, error) {
	var p any
	if err := decodeNumbers(patch, &p); err != nil {
		return nil, Errorf(Invalid, "metadata patch must be JSON")
	}
	var d any
	if len(doc) > 0 {
		if err := decodeNumbers(doc, &d); err != nil {
			return nil, Errorf(Internal, "stored metadata is not JSON")
		}
	}
	merged := mergePatch(d, p)
	if merged == nil {
		return nil, nil
	}
	b, err := json.Marshal(merged)
	if err != nil {
		return nil, Errorf(Invalid, "metadata patch must be JSON")
	}
	return ValidateMetadata(b)
}

// decodeNumbers decodes JSON keeping numbers as written (no float64
// rounding of large integers).
func decodeNumbers(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return Errorf(Invalid, "trailing data")
	}
	return nil
}

func mergePatch(doc, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	d, ok := doc.(map[string]any)
	if !ok {
		d = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(d, k)
			continue
		}
		d[k] = mergePatch(d[k], v)
	}
	return d
}
