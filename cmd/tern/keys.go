package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/trust"
)

func keysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Manage release keys"}
	var out string
	gen := &cobra.Command{
		Use:   "generate --out DIR/NAME",
		Short: "Generate an ed25519 release key pair: NAME.key (PKCS#8 PEM, 0600) and NAME.pub",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := trust.GenerateKey()
			if err != nil {
				return err
			}
			if err := trust.WriteKeyPair(out, k); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s: %s.key %s.pub\n", trust.ShortID(k.ID), out, out)
			return nil
		},
	}
	gen.Flags().StringVar(&out, "out", "", "path and base name of the key pair (DIR/NAME)")
	gen.MarkFlagRequired("out")
	cmd.AddCommand(gen)
	return cmd
}
