package server

import (
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"time"
)

// OpenAPI returns the API's OpenAPI 3.1 document, generated from the route table
// so it cannot drift from what the server serves.
func OpenAPI() map[string]any {
	paths := map[string]map[string]any{}
	for _, rt := range routes() {
		op := map[string]any{"summary": rt.Summary, "operationId": operationID(rt)}
		status := rt.Status
		if status == 0 {
			status = 200
		}
		resp := map[string]any{"description": http.StatusText(status)}
		if rt.Response != nil {
			resp["content"] = map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(rt.Response))}}
		}
		responses := map[string]any{itoa(status): resp}
		problem := map[string]any{"description": "error", "content": map[string]any{
			"application/problem+json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Problem"}}}}
		responses["default"] = problem
		if rt.Path == "/api/v1/enroll" {
			responses["202"] = map[string]any{"description": "pending: ask again after retry_after seconds",
				"content": map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(rt.Response))}}}
		}
		op["responses"] = responses
		if rt.Request != nil || rt.RequestType != "" {
			content := map[string]any{}
			if rt.Request != nil {
				content["application/json"] = map[string]any{"schema": schemaOf(reflect.TypeOf(rt.Request))}
			}
			switch rt.RequestType {
			case "":
			case "multipart/form-data":
				content[rt.RequestType] = map[string]any{"schema": map[string]any{"type": "object", "properties": map[string]any{
					"name":    map[string]any{"type": "string"},
					"package": map[string]any{"type": "array", "items": map[string]any{"type": "string", "format": "binary"}}}}}
			default:
				binary := map[string]any{"schema": map[string]any{"type": "string", "format": "binary"}}
				content[rt.RequestType], content["application/octet-stream"] = binary, binary
			}
			op["requestBody"] = map[string]any{"required": true, "content": content}
		}
		if rt.Device {
			resp["content"] = map[string]any{"application/octet-stream": map[string]any{"schema": map[string]any{"type": "string", "format": "binary"}}}
			responses["206"] = map[string]any{"description": "Partial Content (Range)"}
			op["security"] = []any{map[string]any{"deviceCert": []string{}}}
			op["description"] = "For devices: authenticated by the device's client certificate (mutual TLS); serves only what the releases of the device's account hold."
		} else if rt.Role != "" {
			op["security"] = []any{map[string]any{"apiKey": []string{}}}
			desc := "Requires role " + string(rt.Role) + " or higher"
			if rt.System {
				desc += ", in the default account"
			}
			op["description"] = desc + "."
		} else {
			op["security"] = []any{}
		}
		var params []any
		for _, m := range pathParam.FindAllStringSubmatch(rt.Path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		if len(params) > 0 {
			op["parameters"] = params
		}
		if paths[rt.Path] == nil {
			paths[rt.Path] = map[string]any{}
		}
		paths[rt.Path][strings.ToLower(rt.Method)] = op
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "Tern server API", "version": "1",
			"description": "Device directory, enrollment, accounts and keys, releases, desired state, campaigns, events and webhooks. Errors are RFC 9457 problem+json."},
		"paths": paths,
		"components": map[string]any{
			"securitySchemes": map[string]any{"apiKey": map[string]any{"type": "http", "scheme": "bearer", "description": "An API key: ternk.<id>.<secret>"},
				"deviceCert": map[string]any{"type": "mutualTLS", "description": "The device's client certificate, issued at enrollment"}},
			"schemas": map[string]any{"Problem": map[string]any{"type": "object", "properties": map[string]any{
				"type": map[string]any{"type": "string"}, "title": map[string]any{"type": "string"},
				"status": map[string]any{"type": "integer"}, "detail": map[string]any{"type": "string"}}}},
		},
	}
}

var pathParam = regexp.MustCompile(`\{([a-z]+)\}`)

func operationID(rt route) string {
	parts := []string{strings.ToLower(rt.Method)}
	for _, p := range strings.Split(strings.TrimPrefix(rt.Path, "/api/v1/"), "/") {
		if strings.HasPrefix(p, "{") {
			p = "by-" + strings.Trim(p, "{}")
		}
		parts = append(parts, strings.ReplaceAll(strings.TrimSuffix(p, ".json"), "-", "_"))
	}
	return strings.Join(parts, "_")
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

var (
	timeType      = reflect.TypeOf(time.Time{})
	rawType       = reflect.TypeOf(json.RawMessage{})
	marshalerType = reflect.TypeOf((*json.Marshaler)(nil)).Elem()
)

// schemaOf derives a JSON Schema from a Go type and its json tags.
func schemaOf(t reflect.Type) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t == rawType:
		return map[string]any{}
	case t.Kind() != reflect.Pointer && t.Implements(marshalerType):
		return map[string]any{"type": "string"} // Amount ("10%"), Duration ("1m")
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaOf(t.Elem())
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem())}
	case reflect.Struct:
		props := map[string]any{}
		addFields(t, props)
		return map[string]any{"type": "object", "properties": props}
	}
	return map[string]any{}
}

func addFields(t reflect.Type, props map[string]any) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			addFields(f.Type, props)
			continue
		}
		if name == "" {
			name = f.Name
		}
		props[name] = schemaOf(f.Type)
	}
}

func (s *Server) getOpenAPI(w http.ResponseWriter, r *http.Request, _ *caller) error {
	return writeJSON(w, 200, OpenAPI())
}
