// Command hello is Tern's example app: a tiny static HTTP server that answers with
// a greeting and its version, and serves /healthz for its health check.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	listen := flag.String("listen", ":8080", "address to listen on")
	flag.Parse()
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "hello"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s from hello %s\n", greeting, version)
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	log.Printf("hello %s listening on %s", version, *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
