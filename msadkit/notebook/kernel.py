"""The Jupyter kernel batch runs execute notebooks in: this interpreter, local sockets, batch mode."""

from __future__ import annotations

import os
import sys

from msadkit.notebook.results import BATCH_ENV_VAR

__all__ = ["current_interpreter_kernel_manager"]


def current_interpreter_kernel_manager() -> type:
    """A kernel manager class that starts ipykernel with ``sys.executable``.

    Kernel specs resolve ``python3`` through the Jupyter data path, which may point at another
    environment; the kit's notebooks must run with the interpreter that has this package.
    """
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec
    from traitlets import default

    class CurrentInterpreterKernelManager(AsyncKernelManager):
        @default("transport")
        def _local_sockets(self) -> str:
            # Unix sockets (next to the connection file): the kernel is local, and ipykernel warns on
            # stderr about a TCP kernel without encryption.
            return "ipc" if os.name == "posix" else "tcp"

        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(
                    argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    display_name=f"Python ({sys.executable})",
                    language="python",
                    env={BATCH_ENV_VAR: "1"},
                )
            return self._kernel_spec

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts every kernel before asking it to shut down; a kernel whose
            # notebook has finished is idle, and ipykernel then logs "KeyboardInterrupt caught in
            # kernel" on stderr (a loaded machine delivers the signal late enough to hit that).
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return CurrentInterpreterKernelManager
