import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How a session's processes are confined.
public enum SandboxKind: String, Sendable {
    /// Plain processes: they see everything the control plane's user sees.
    case none
    /// bubblewrap namespaces: see `SandboxWrapper.wrap`.
    case bwrap
}

/// Why a requested sandbox cannot be used.
public struct SandboxUnavailable: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// Wraps a session's command lines (its runtime, its setup commands) in the sandbox.
///
/// With bubblewrap, a wrapped process
/// - sees the whole file system read-only, except its own workspace and HOME (writable);
/// - sees an empty tmpfs in place of the data directory (no other session's workspace or home,
///   no database, no keys) and a private `/tmp`;
/// - has its own PID namespace (it sees only its own processes and cannot signal others), IPC
///   and UTS namespaces, a minimal `/dev`, and no capabilities (`--cap-drop ALL`: even when the
///   control plane runs as root, it cannot remount or unmount its way out);
/// - shares the network with the host: the runtime must reach the control plane on 127.0.0.1
///   and agents their model APIs. It can therefore reach any local service, and it can read
///   whatever the control plane's user can read outside the data directory.
///
/// Its process group is the bwrap process's, so signalling the group reaches the processes
/// inside, across the PID namespace. There is deliberately no `--die-with-parent`: SIGTERM to
/// the group ends the outer bwrap at once, and with that option its death would SIGKILL the
/// whole namespace while the runtime is still reporting its interrupted execution. Without it
/// the namespace's init (which ignores SIGTERM) waits for the runtime to finish; stop the group,
/// never the bwrap pid alone.
public struct SandboxWrapper: Sendable {
    public let kind: SandboxKind
    public let dataDirectory: URL
    /// Where bwrap was found on PATH (`bwrap` when it was not, so that starting fails visibly).
    public let bwrapPath: String
    /// Directories every sandboxed process may read although they lie below a hidden one (the
    /// agents' binaries, installed under /tmp or the data directory, say).
    public private(set) var exposedDirectories: [String] = []

    /// The same sandbox, with `directories` readable inside it where they would be hidden.
    public func exposing(_ directories: [String]) -> SandboxWrapper {
        var copy = self
        copy.exposedDirectories = directories
        return copy
    }

    public init(kind: SandboxKind, dataDirectory: URL) {
        self.kind = kind
        self.dataDirectory = dataDirectory.standardizedFileURL
        self.bwrapPath = ExecutableLookup.find("bwrap") ?? "bwrap"
    }

    /// `requested` is `bwrap`, `none` or `auto` (bwrap when a probe under bwrap succeeds, else
    /// none). `bwrap` that is missing or does not work throws `SandboxUnavailable` saying why.
    /// Creates the data directory (bwrap mounts over it).
    public static func resolve(_ requested: String, dataDirectory: URL) throws -> SandboxWrapper {
        switch requested.lowercased() {
        case "none":
            return SandboxWrapper(kind: .none, dataDirectory: dataDirectory)
        case "bwrap":
            let wrapper = SandboxWrapper(kind: .bwrap, dataDirectory: dataDirectory)
            try wrapper.probe()
            return wrapper
        case "auto":
            let wrapper = SandboxWrapper(kind: .bwrap, dataDirectory: dataDirectory)
            if (try? wrapper.probe()) != nil { return wrapper }
            return SandboxWrapper(kind: .none, dataDirectory: dataDirectory)
        default:
            throw SandboxUnavailable(description: "unknown sandbox '\(requested)': expected bwrap, none or auto")
        }
    }

    /// `argv` as it must be started to run in the sandbox, in `workspace`, with `home` writable.
    public func wrap(_ argv: [String], workspace: URL, home: URL) -> [String] {
        switch kind {
        case .none:
            return argv
        case .bwrap:
            let workspacePath = workspace.standardizedFileURL.path
            let homePath = home.standardizedFileURL.path
            // The program itself may live below a hidden directory (a build under /tmp): its
            // directory is bound back, read-only.
            var program: [String] = []
            let dataPath = dataDirectory.standardizedFileURL.path
            func hidden(_ directory: String) -> Bool {
                directory == "/tmp" || directory.hasPrefix("/tmp/") || directory == dataPath || directory.hasPrefix(dataPath + "/")
            }
            var directories = exposedDirectories.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
            if let executable = argv.first, executable.hasPrefix("/") {
                directories.insert(URL(fileURLWithPath: executable).deletingLastPathComponent().standardizedFileURL.path, at: 0)
            }
            var bound: Set<String> = []
            for directory in directories where hidden(directory) && bound.insert(directory).inserted {
                program += ["--ro-bind", directory, directory]
            }
            // The tmpfs mounts come before the binds: they hide the data directory (and with it
            // other sessions), then the session's own directories are bound back on top.
            return [
                bwrapPath,
                "--ro-bind", "/", "/",
                "--dev", "/dev",
                "--proc", "/proc",
                "--tmpfs", "/tmp",
                "--tmpfs", dataDirectory.path,
                "--bind", workspacePath, workspacePath,
                "--bind", homePath, homePath,
            ] + program + [
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--cap-drop", "ALL",
                "--chdir", workspacePath,
                "--",
            ] + argv
        }
    }

    /// Runs `true` the way a session's runtime would be run; throws why it failed.
    func probe() throws {
        guard kind == .bwrap else { return }
        guard bwrapPath.hasPrefix("/") else {
            throw SandboxUnavailable(description: "bwrap not found on PATH (install bubblewrap, or set the sandbox to none)")
        }
        let manager = FileManager.default
        let probeDirectory = dataDirectory.appendingPathComponent(".sandbox-probe-\(UUID().uuidString.lowercased())", isDirectory: true)
        let log = manager.temporaryDirectory.appendingPathComponent("cloud-agent-bwrap-probe-\(UUID().uuidString.lowercased()).log")
        defer {
            try? manager.removeItem(at: probeDirectory)
            try? manager.removeItem(at: log)
        }
        do {
            try manager.createDirectory(at: probeDirectory, withIntermediateDirectories: true)
        } catch {
            throw SandboxUnavailable(description: "cannot create \(probeDirectory.path): \(error)")
        }
        let argv = wrap(["/bin/sh", "-c", "true"], workspace: probeDirectory, home: probeDirectory)
        let pid: pid_t
        do {
            pid = try ProcessControl.spawn(
                argv: argv, environment: ["PATH": ExecutableLookup.defaultPath],
                workingDirectory: probeDirectory, stdin: nil, logFile: log
            )
        } catch {
            throw SandboxUnavailable(description: "bwrap could not be started: \(error)")
        }
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        var exitCode: Int32?
        while exitCode == nil, ContinuousClock.now < deadline {
            exitCode = ProcessControl.reapIfExited(pid).map(ProcessControl.exitCode(fromWaitStatus:))
            if exitCode == nil { usleep(10_000) }
        }
        if exitCode == nil {
            ProcessControl.signalGroup(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        guard exitCode == 0 else {
            let output = (try? String(contentsOf: log, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            let outcome = exitCode.map { "exit code \($0)" } ?? "no answer within 10 s"
            throw SandboxUnavailable(description: "bwrap does not work here (\(outcome))" + (output.isEmpty ? "" : ": \(output)"))
        }
    }
}
