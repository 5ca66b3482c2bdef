// Command herald is Herald's command line: `herald dev` runs the whole mesh
// on this machine.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "herald",
		Short:         "Herald: an event mesh for event-driven APIs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(devCommand())
	root.AddCommand(catalogCommand())
	root.AddCommand(benchCommand())
	root.AddCommand(listenCommand())
	root.AddCommand(webhooksCommand())
	root.AddCommand(triggerCommand())
	root.AddCommand(portalCommand())
	root.AddCommand(codegenCommand())
	root.AddCommand(bridgeCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "herald:", err)
		os.Exit(1)
	}
}
