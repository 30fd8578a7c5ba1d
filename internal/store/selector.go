package store

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// ErrBadSelector reports a label selector that does not parse.
var ErrBadSelector = errors.New("invalid label selector")

// Requirement is one clause of a label selector.
type Requirement struct {
	Key   string
	Op    string // "=", "!=", "exists", "!exists"
	Value string
}

// Selector is a conjunction of requirements over device labels, written as in
// Kubernetes: "env=prod,region!=eu,gpu,!legacy". The empty selector matches all.
type Selector []Requirement

var labelKey = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62}[A-Za-z0-9])?$`)
var labelValue = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?)?$`)

// ValidLabel reports whether key=value is a well-formed label.
func ValidLabel(key, value string) error {
	if !labelKey.MatchString(key) {
		return fmt.Errorf("%w: label key %q", ErrBadSelector, key)
	}
	if !labelValue.MatchString(value) {
		return fmt.Errorf("%w: label value %q", ErrBadSelector, value)
	}
	return nil
}

// ParseSelector parses a selector string.
func ParseSelector(s string) (Selector, error) {
	var sel Selector
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		var r Requirement
		switch {
		case strings.Contains(part, "!="):
			k, v, _ := strings.Cut(part, "!=")
			r = Requirement{Key: strings.TrimSpace(k), Op: "!=", Value: strings.TrimSpace(v)}
		case strings.Contains(part, "=="):
			k, v, _ := strings.Cut(part, "==")
			r = Requirement{Key: strings.TrimSpace(k), Op: "=", Value: strings.TrimSpace(v)}
		case strings.Contains(part, "="):
			k, v, _ := strings.Cut(part, "=")
			r = Requirement{Key: strings.TrimSpace(k), Op: "=", Value: strings.TrimSpace(v)}
		case strings.HasPrefix(part, "!"):
			r = Requirement{Key: strings.TrimSpace(part[1:]), Op: "!exists"}
		default:
			r = Requirement{Key: part, Op: "exists"}
		}
		if err := ValidLabel(r.Key, r.Value); err != nil {
			return nil, err
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// String writes sel in its canonical form.
func (sel Selector) String() string {
	parts := make([]string, 0, len(sel))
	for _, r := range sel {
		switch r.Op {
		case "exists":
			parts = append(parts, r.Key)
		case "!exists":
			parts = append(parts, "!"+r.Key)
		default:
			parts = append(parts, r.Key+r.Op+r.Value)
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// Matches reports whether labels satisfy every requirement.
func (sel Selector) Matches(labels map[string]string) bool {
	for _, r := range sel {
		v, ok := labels[r.Key]
		switch r.Op {
		case "=":
			if !ok || v != r.Value {
				return false
			}
		case "!=":
			if ok && v == r.Value {
				return false
			}
		case "exists":
			if !ok {
				return false
			}
		case "!exists":
			if ok {
				return false
			}
		}
	}
	return true
}

// sql renders sel as a WHERE fragment over devices aliased d, with its arguments.
func (sel Selector) sql() (string, []any) {
	var clauses []string
	var args []any
	for _, r := range sel {
		switch r.Op {
		case "=":
			clauses = append(clauses, `EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.name = ? AND l.value = ?)`)
			args = append(args, r.Key, r.Value)
		case "!=":
			clauses = append(clauses, `NOT EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.name = ? AND l.value = ?)`)
			args = append(args, r.Key, r.Value)
		case "exists":
			clauses = append(clauses, `EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.name = ?)`)
			args = append(args, r.Key)
		case "!exists":
			clauses = append(clauses, `NOT EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.name = ?)`)
			args = append(args, r.Key)
		}
	}
	return strings.Join(clauses, " AND "), args
}
