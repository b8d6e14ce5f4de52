import Foundation
import Synchronization

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

/// Wraps a session's command lines (its runtime, its setup commands, git on its workspace) in
/// the sandbox.
///
/// With bubblewrap, a wrapped process sees an empty root into which only these are mounted:
/// - the system's programs, libraries and configuration, read-only (`/usr`, `/bin`, `/sbin`,
///   `/lib*`, `/opt`, and `/etc` with its secrets — shadow files, ssh host keys, TLS private
///   keys, sudoers — hidden);
/// - the agents' binaries and the runtime's own directory, read-only (`exposedDirectories`);
/// - its own workspace and HOME, read-write, at their host paths;
/// - a private `/tmp` and `/var/tmp`, a minimal `/dev` and its own `/proc`.
///
/// Nothing else of the host is there: no home directory, no data directory (no database, no
/// keys, no other session), no `/run`, no `/sys`. The root itself is remounted read-only.
///
/// It runs as uid 1000 without capabilities in a user namespace where the kernel allows one
/// (`userNamespace`); in its own PID namespace (it can signal only its own processes), IPC and
/// UTS namespaces, and its own session (`--new-session`: no terminal of the control plane's to
/// push input into). It shares the network with the host: the runtime must reach the control
/// plane on 127.0.0.1 and agents their model APIs.
///
/// The sandbox outlives the control plane. The launched `bwrap` is started in a session of its
/// own (`ProcessControl.spawnDetached`) and is the sandbox's monitor, as podman's `conmon` is a
/// container's: the parent of the sandbox's init, re-parented to the host's init when the
/// control plane exits or crashes, and found again by a restarted control plane (or another
/// node) from its recorded pid and start time. It is deliberately not run with
/// `--die-with-parent`, which would kill the sandbox when the control plane (bwrap's parent)
/// exits: every deploy would kill every agent.
///
/// A stop still takes everything: the control plane signals the sandbox's program (the runtime),
/// which it finds as the launched process's grandchild (see `ProcessTree`), then SIGKILLs every
/// process of the launch from the top. The sandbox's init is PID 1 of its PID namespace, so its
/// death makes the kernel kill whatever is left inside, a process that double-forked included.
public struct SandboxWrapper: Sendable {
    public let kind: SandboxKind
    public let dataDirectory: URL
    /// Where bwrap was found on PATH (`bwrap` when it was not, so that starting fails visibly).
    public let bwrapPath: String
    /// Whether the sandbox gets a user namespace (the agent runs as uid 1000, not as the control
    /// plane's user); false where the kernel refuses one (`resolve` finds out).
    public private(set) var userNamespace = true
    /// Directories every sandboxed process may read (the agents' binaries, say).
    public private(set) var exposedDirectories: [String] = []

    /// The uid and gid of a sandboxed process inside its user namespace.
    public static let sandboxUser = "1000"

    /// The system's directories bound read-only (those that exist; a symlink such as `/bin ->
    /// usr/bin` is recreated as a symlink).
    static let systemDirectories = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/etc"]

    /// Files and directories of `/etc` that hold secrets of the host: hidden.
    static let hiddenSystemPaths = [
        "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d",
        "/etc/ssh", "/etc/ssl/private", "/etc/security/opasswd", "/etc/credstore", "/etc/credstore.encrypted",
    ]

    /// The same sandbox, with `directories` readable inside it.
    public func exposing(_ directories: [String]) -> SandboxWrapper {
        var copy = self
        copy.exposedDirectories = directories
        return copy
    }

    /// `bwrapPath` is where bubblewrap is (found on PATH when nil).
    public init(kind: SandboxKind, dataDirectory: URL, bwrapPath: String? = nil) {
        self.kind = kind
        self.dataDirectory = dataDirectory.standardizedFileURL
        self.bwrapPath = bwrapPath ?? ExecutableLookup.find("bwrap") ?? "bwrap"
    }

    /// What `resolve` found, for the start-up log: the sandbox, and a warning when it is weaker
    /// than asked (`auto` without bubblewrap, a sandbox without a user namespace).
    public struct Resolution: Sendable {
        public var sandbox: SandboxWrapper
        public var warning: String?
    }

    /// `requested` is `bwrap`, `none` or `auto` (bwrap when a probe under bwrap succeeds, else
    /// none, with a warning saying what that means and how to fix it). `bwrap` that is missing
    /// or does not work throws `SandboxUnavailable` saying why. Creates the data directory.
    public static func resolve(_ requested: String, dataDirectory: URL) async throws -> SandboxWrapper {
        try await resolveExplained(requested, dataDirectory: dataDirectory).sandbox
    }

    public static func resolveExplained(_ requested: String, dataDirectory: URL, bwrapPath: String? = nil) async throws -> Resolution {
        switch requested.lowercased() {
        case "none":
            return Resolution(sandbox: SandboxWrapper(kind: .none, dataDirectory: dataDirectory))
        case "bwrap":
            return try await probed(dataDirectory: dataDirectory, bwrapPath: bwrapPath)
        case "auto":
            do {
                return try await probed(dataDirectory: dataDirectory, bwrapPath: bwrapPath)
            } catch {
                return Resolution(
                    sandbox: SandboxWrapper(kind: .none, dataDirectory: dataDirectory),
                    warning: "no sandbox: \(error). Agents will run as plain processes of this user: they can read "
                        + "and change everything this user can, the data directory and other sessions included. Install "
                        + "bubblewrap (apt-get install bubblewrap) and restart, or set CLOUD_AGENT_SANDBOX=none to accept this "
                        + "(CLOUD_AGENT_SANDBOX=bwrap refuses to start without it)"
                )
            }
        default:
            throw SandboxUnavailable(description: "unknown sandbox '\(requested)': expected bwrap, none or auto")
        }
    }

    /// bwrap with a user namespace when that works, else without one (with a warning).
    private static func probed(dataDirectory: URL, bwrapPath: String?) async throws -> Resolution {
        let wrapper = SandboxWrapper(kind: .bwrap, dataDirectory: dataDirectory, bwrapPath: bwrapPath)
        do {
            try await wrapper.probe()
            return Resolution(sandbox: wrapper)
        } catch let withNamespace {
            var fallback = wrapper
            fallback.userNamespace = false
            guard (try? await fallback.probe()) != nil else { throw withNamespace }
            return Resolution(
                sandbox: fallback,
                warning: "the sandbox has no user namespace (\(withNamespace)): agents run as this user (uid \(getuid())) "
                    + "without capabilities. Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) for uid \(sandboxUser)"
            )
        }
    }

    /// `argv` as it must be started to run in the sandbox, in `workspace`, with `workspace` and
    /// `home` writable. `extraBinds` are host directories bound read-write at the same path (a
    /// directory of the control plane's that one command writes its result to).
    public func wrap(_ argv: [String], workspace: URL, home: URL, extraBinds: [URL] = []) -> [String] {
        switch kind {
        case .none:
            return argv
        case .bwrap:
            let workspacePath = workspace.standardizedFileURL.path
            let homePath = home.standardizedFileURL.path
            var arguments = [bwrapPath]
            arguments += Self.systemMounts()
            // A data directory inside a system directory (/opt/cloud-agent, say) is hidden there.
            let dataPath = dataDirectory.standardizedFileURL.path
            if Self.isSystemPath(dataPath) { arguments += ["--tmpfs", dataPath] }
            arguments += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
            // The program's own directory (the runtime beside the control plane, a build under
            // /tmp) and the agents' binaries, read-only; then the session's own directories.
            var directories = exposedDirectories.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
            if let executable = argv.first, executable.hasPrefix("/") {
                directories.insert(URL(fileURLWithPath: executable).deletingLastPathComponent().standardizedFileURL.path, at: 0)
            }
            var bound: Set<String> = []
            for directory in directories where !Self.isSystemPath(directory) && bound.insert(directory).inserted {
                arguments += ["--ro-bind-try", directory, directory]
            }
            arguments += ["--bind", workspacePath, workspacePath, "--bind", homePath, homePath]
            for extra in extraBinds {
                let path = extra.standardizedFileURL.path
                arguments += ["--bind", path, path]
            }
            if userNamespace {
                arguments += ["--unshare-user", "--uid", Self.sandboxUser, "--gid", Self.sandboxUser]
            }
            return arguments + [
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--hostname", "sandbox",
                "--cap-drop", "ALL",
                "--new-session",
                "--remount-ro", "/",
                "--chdir", workspacePath,
                "--",
            ] + argv
        }
    }

    /// The read-only system mounts, with `/etc`'s secrets hidden (an empty file or directory
    /// over each one that exists).
    static func systemMounts(root: String = "/") -> [String] {
        let manager = FileManager.default
        var arguments: [String] = []
        for directory in systemDirectories {
            let hostPath = root == "/" ? directory : root + directory
            if let target = try? manager.destinationOfSymbolicLink(atPath: hostPath) {
                arguments += ["--symlink", target, directory]
                continue
            }
            var isDirectory: ObjCBool = false
            guard manager.fileExists(atPath: hostPath, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
            arguments += ["--ro-bind", hostPath, directory]
        }
        // /etc/resolv.conf may point into /run (systemd-resolved): its target is bound back.
        if let resolved = GitWorkspaces.realPath("/etc/resolv.conf"), !isSystemPath(resolved) {
            arguments += ["--ro-bind", resolved, resolved]
        }
        for path in hiddenSystemPaths {
            var isDirectory: ObjCBool = false
            guard manager.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            arguments += isDirectory.boolValue ? ["--tmpfs", path] : ["--ro-bind", "/dev/null", path]
        }
        return arguments
    }

    /// Whether `path` lies in one of the system directories already bound.
    static func isSystemPath(_ path: String) -> Bool {
        systemDirectories.contains { path == $0 || path.hasPrefix($0 + "/") }
    }

    /// Runs `true` the way a session's runtime would be run; throws why it failed. The wait for
    /// its exit is an event (a pidfd), never a blocking wait. A bwrap that worked once (with or
    /// without a user namespace) is not probed again by this process: whether namespaces work
    /// is the machine's, not the data directory's.
    func probe() async throws {
        guard kind == .bwrap else { return }
        guard bwrapPath.hasPrefix("/"), FileManager.default.isExecutableFile(atPath: bwrapPath) else {
            throw SandboxUnavailable(description: "bwrap not found on PATH (install bubblewrap, or set the sandbox to none)")
        }
        let key = "\(bwrapPath) userNamespace=\(userNamespace)"
        if Self.workingProbes.withLock({ $0.contains(key) }) { return }
        try await probeOnce()
        Self.workingProbes.withLock { _ = $0.insert(key) }
    }

    /// The bwraps (and namespace choices) that worked in this process.
    private static let workingProbes = Mutex<Set<String>>([])

    private func probeOnce() async throws {
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
        let process: SpawnedProcess
        do {
            process = try ProcessControl.spawnDetached(
                argv: argv, environment: ["PATH": ExecutableLookup.defaultPath],
                workingDirectory: probeDirectory, stdin: nil, logFile: log
            )
        } catch {
            throw SandboxUnavailable(description: "bwrap could not be started: \(error)")
        }
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        var exitCode: Int32?
        while exitCode == nil, ContinuousClock.now < deadline {
            exitCode = ProcessControl.reapIfExited(process.pid).map(ProcessControl.exitCode(fromWaitStatus:))
            if exitCode == nil { _ = await ProcessControl.waitForAnExit(of: [process], until: deadline) }
        }
        if exitCode == nil {
            ProcessControl.killTree(process)
            for _ in 0..<10 where ProcessControl.reapIfExited(process.pid) == nil {
                _ = await ProcessControl.waitForAnExit(of: [process], until: ContinuousClock.now.advanced(by: .seconds(1)))
            }
        }
        guard exitCode == 0 else {
            let output = (try? String(contentsOf: log, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            let outcome = exitCode.map { "exit code \($0)" } ?? "no answer within 10 s"
            throw SandboxUnavailable(description: "bwrap does not work here (\(outcome))" + (output.isEmpty ? "" : ": \(output)"))
        }
    }
}
