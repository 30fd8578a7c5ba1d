package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/trust"
)

func appCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "app", Short: "Build, sign, verify and inspect app packages (.tern)"}
	cmd.AddCommand(appBuildCmd(), appSignCmd(), appVerifyCmd(), appInspectCmd())
	return cmd
}

func loadPrivateKeys(paths []string) ([]trust.PrivateKey, error) {
	var keys []trust.PrivateKey
	for _, p := range paths {
		k, err := trust.LoadPrivateKey(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func loadPublicKeys(paths []string) ([]trust.PublicKey, error) {
	var keys []trust.PublicKey
	for _, p := range paths {
		k, err := trust.LoadPublicKey(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func appBuildCmd() *cobra.Command {
	var from, manifest, out, compression, platform string
	var keyPaths []string
	cmd := &cobra.Command{
		Use:   "build [--from rootfs:DIR | oci:DIR[:TAG] | docker-archive:FILE] --manifest tern.yaml --key K.key -o APP.tern",
		Short: "Build a signed app package from an image and a manifest",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(manifest)
			if err != nil {
				return err
			}
			m, err := app.ParseYAML(data)
			if err != nil {
				return fmt.Errorf("%s: %w", manifest, err)
			}
			if from == "" {
				// Default: a rootfs/ directory beside tern.yaml.
				from = "rootfs:" + filepath.Join(filepath.Dir(manifest), "rootfs")
			}
			src, err := app.ParseSource(from)
			if err != nil {
				return err
			}
			keys, err := loadPrivateKeys(keyPaths)
			if err != nil {
				return err
			}
			if out == "" {
				out = fmt.Sprintf("%s-%s.tern", m.Name, m.Version)
			}
			pm, err := app.BuildFile(cmd.Context(), app.BuildOptions{
				Source: src, Manifest: m, Keys: keys, Compression: compression, Platform: platform,
			}, out)
			if err != nil {
				return err
			}
			var total int64
			for _, l := range pm.Image.Layers {
				total += l.Size
			}
			fmt.Fprintf(cmd.OutOrStdout(), "built %s: %s %s, %d layer(s), %d bytes of layers, signed by %d key(s)\n",
				out, pm.App.Name, pm.App.Version, len(pm.Image.Layers), total, len(keys))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "image source: rootfs:DIR, oci:DIR[:TAG] or docker-archive:FILE (default rootfs:<manifest dir>/rootfs)")
	f.StringVar(&manifest, "manifest", "tern.yaml", "the app manifest")
	f.StringArrayVar(&keyPaths, "key", nil, "release private key to sign with (repeat for k-of-n)")
	f.StringVarP(&out, "output", "o", "", "package file to write (default NAME-VERSION.tern)")
	f.StringVar(&compression, "compression", app.CompressZstd, "compression for layers tern makes: zstd or gzip")
	f.StringVar(&platform, "platform", "", "os/arch to pick from a multi-platform OCI index (default linux/<this machine>)")
	cmd.MarkFlagRequired("key")
	return cmd
}

func appSignCmd() *cobra.Command {
	var keyPaths []string
	cmd := &cobra.Command{
		Use:   "sign APP.tern --key K.key",
		Short: "Add a release key's signature to a package (k-of-n signing)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := loadPrivateKeys(keyPaths)
			if err != nil {
				return err
			}
			p, err := app.Resign(args[0], keys...)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "signed %s: %d signature(s)\n", args[0], len(p.Envelope.Signatures))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&keyPaths, "key", nil, "release private key (repeatable)")
	cmd.MarkFlagRequired("key")
	return cmd
}

func appVerifyCmd() *cobra.Command {
	var pubPaths []string
	var threshold int
	cmd := &cobra.Command{
		Use:   "verify APP.tern --pubkey K.pub [--pubkey ...] [--threshold N]",
		Short: "Verify a package: structure, every digest, and k-of-n trusted signatures",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := loadPublicKeys(pubPaths)
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			p, err := app.Read(f, app.ReadOptions{Keys: keys, Threshold: threshold}, app.Discard)
			if err != nil {
				return fmt.Errorf("%s: INVALID: %w", args[0], err)
			}
			short := make([]string, len(p.SignedBy))
			for i, id := range p.SignedBy {
				short[i] = trust.ShortID(id)
			}
			what := p.Manifest.App.Name + " " + p.Manifest.App.Version
			if o := p.Manifest.OS; o != nil {
				what = "OS " + o.Version
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: OK %s, %d blob(s) verified, signed by %s\n",
				args[0], what, len(p.Manifest.Blobs()), strings.Join(short, ", "))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&pubPaths, "pubkey", nil, "trusted release public key (repeatable)")
	cmd.Flags().IntVar(&threshold, "threshold", 1, "distinct trusted signatures required")
	cmd.MarkFlagRequired("pubkey")
	return cmd
}

func appInspectCmd() *cobra.Command {
	var asJSON bool
	var pubPaths []string
	cmd := &cobra.Command{
		Use:   "inspect APP.tern [--json]",
		Short: "Show a package's manifest, layers and signatures",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := loadPublicKeys(pubPaths)
			if err != nil {
				return err
			}
			info, err := app.InspectFile(args[0], keys)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			return info.WriteText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringArrayVar(&pubPaths, "pubkey", nil, "mark signatures by these keys as trusted")
	return cmd
}
