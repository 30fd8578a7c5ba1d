package server_test

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/tern-iot/tern/internal/server"
)

// TestOpenAPIDocInDocsIsCurrent keeps docs/openapi.json equal to what the server
// serves. Regenerate with TERN_UPDATE_OPENAPI=1 go test ./internal/server -run OpenAPIDoc.
func TestOpenAPIDocInDocsIsCurrent(t *testing.T) {
	want, err := json.MarshalIndent(server.OpenAPI(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	const path = "../../docs/openapi.json"
	if os.Getenv("TERN_UPDATE_OPENAPI") != "" {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("docs/openapi.json is stale (%v): run TERN_UPDATE_OPENAPI=1 go test ./internal/server -run OpenAPIDoc", err)
	}
}
