import CloudAgentCore
import Foundation
import Logging
import SystemPackage
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Prepares and restores sessions' workspaces: a git checkout on the session's work branch, a
/// HOME of its own, and the session's setup commands run in the sandbox.
///
/// Git on the host never works on a repository the agent has written to: it reads
/// `.git/config`, hooks, attributes and alternates from the repository it works on, and those
/// are the agent's. Host-side git clones and checks out a fresh workspace before the agent's
/// first run, and pushes from a mirror the control plane owns (see `autoCommit`); every other
/// git command on a workspace runs in the sandbox, without the token.
///
/// git runs with `GIT_TERMINAL_PROMPT=0`, no askpass, ssh in batch mode, only a few variables of
/// the control plane's environment (none of its secrets), and a time limit. A repository token
/// reaches host-side git only through a credential helper given on the command line, which
/// reads it from `CLOUD_AGENT_GIT_TOKEN` in that git process's environment and answers only for
/// the protocol and host of the session's repo URL: it is never in a URL, in `.git/config`, in a
/// log line or in a `SetupFailure`, and never offered to another address.
public struct GitWorkspaces: Sendable {
    public let layout: WorkspaceLayout
    public let sandbox: SandboxWrapper
    public let logger: Logger
    /// Time limit of each git step (clone, checkout, …).
    public let gitTimeoutMs: Int64

    public init(layout: WorkspaceLayout, sandbox: SandboxWrapper, logger: Logger, gitTimeoutMs: Int64 = 600_000) {
        self.layout = layout
        self.sandbox = sandbox
        self.logger = logger
        self.gitTimeoutMs = gitTimeoutMs
    }

    /// The PATH of setup commands (and of the runtime).
    public static let sessionPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// Prepares a new session's workspace: creates its HOME; clones `repo.url` into the
    /// workspace and checks out `repo.branch` (which must exist: else a failure with command
    /// `git checkout <branch>`), then creates `workBranch` from it when it is another branch;
    /// without a repo, `git init` with `workBranch` as the initial branch. Then runs each setup
    /// command in the workspace, in the sandbox, with the session's environment and the time
    /// limit. The first failure removes the workspace and the home (nothing is kept) and is thrown.
    public func prepare(_ request: WorkspaceRequest) async throws(SetupFailure) {
        do throws(SetupFailure) {
            layout.removeWorkspaceAndHome(request.sessionId)
            try createHome(request)
            try await checkOut(request)
            for command in request.setupCommands {
                if let failure = await runSetupCommand(command, request) { throw failure }
            }
        } catch {
            layout.removeWorkspaceAndHome(request.sessionId)
            throw error
        }
    }

    /// Restores a workspace for a cold start. A workspace that still has its `.git` is kept
    /// (with `workBranch` checked out). Otherwise the repo is cloned again and `workBranch`
    /// checked out: the pushed branch when origin has it, else a new branch from `repo.branch`
    /// or the default branch. Then every setup command runs again; failures are returned, not
    /// thrown (a failed git step skips the setup commands: they would run in an empty workspace).
    public func restore(_ request: WorkspaceRequest) async -> [SetupFailure] {
        do throws(SetupFailure) {
            try createHome(request)
            let workspace = layout.workspace(request.sessionId)
            if FileManager.default.fileExists(atPath: workspace.appendingPathComponent(".git").path) {
                try await checkOutExisting(request)
            } else {
                try? FileManager.default.removeItem(at: workspace)
                do throws(SetupFailure) {
                    try await checkOutForRestore(request)
                } catch {
                    try? FileManager.default.createDirectory(at: workspace, withIntermediateDirectories: true)
                    throw error
                }
            }
        } catch {
            return [error]
        }
        var failures: [SetupFailure] = []
        for command in request.setupCommands {
            if let failure = await runSetupCommand(command, request) { failures.append(failure) }
        }
        return failures
    }

    // MARK: - Steps

    private func createHome(_ request: WorkspaceRequest) throws(SetupFailure) {
        let home = layout.home(request.sessionId)
        do {
            try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: layout.workspacesDirectory, withIntermediateDirectories: true)
        } catch {
            throw fail(request, SetupFailure(command: "mkdir \(home.path)", exitCode: 1, outputTail: "\(error)"))
        }
    }

    /// prepare: the branch must exist; the work branch is new.
    private func checkOut(_ request: WorkspaceRequest) async throws(SetupFailure) {
        guard let repo = request.repo else { return try await initRepository(request) }
        try await clone(repo, request)
        try await checkOut(base: try await baseBranch(repo, request), work: request.workBranch, request)
    }

    /// restore without a workspace: the pushed work branch if origin has it, else a new one from
    /// the named branch (while it exists) or the default branch.
    private func checkOutForRestore(_ request: WorkspaceRequest) async throws(SetupFailure) {
        guard var repo = request.repo else { return try await initRepository(request) }
        try await clone(repo, request)
        let work = request.workBranch
        if await remoteBranchExists(work, request) {
            return try await checkOut(base: work, work: work, request)
        }
        if let branch = repo.branch, await !remoteBranchExists(branch, request) {
            repo.branch = nil
        }
        try await checkOut(base: try await baseBranch(repo, request), work: work, request)
    }

    private func initRepository(_ request: WorkspaceRequest) async throws(SetupFailure) {
        let workspace = layout.workspace(request.sessionId)
        try await git(["init", "--quiet", "--initial-branch=\(request.workBranch)", workspace.path], label: "git init", request)
    }

    /// Checks out `base` tracking origin's, then creates `work` from it when it is another branch.
    private func checkOut(base: String?, work: String, _ request: WorkspaceRequest) async throws(SetupFailure) {
        let workspace = layout.workspace(request.sessionId)
        if let base {
            try await git(["checkout", "-B", base, "--track", "refs/remotes/origin/\(base)", "--"], in: workspace, label: "git checkout \(base)", request)
        }
        if work != base {
            // --no-track: the work branch is pushed under its own name, not into the base.
            try await git(["checkout", "-B", work, "--no-track"], in: workspace, label: "git checkout -b \(work)", request)
        }
    }

    /// restore with the workspace still there: only make sure the work branch is checked out.
    /// The workspace is the agent's, so git runs in the sandbox (without the token).
    private func checkOutExisting(_ request: WorkspaceRequest) async throws(SetupFailure) {
        let work = request.workBranch
        let current = await gitOutput(["symbolic-ref", "--quiet", "--short", "HEAD"], sandboxed: true, request)
        guard current != work else { return }
        let exists = await gitOutput(["rev-parse", "--verify", "--quiet", "refs/heads/\(work)"], sandboxed: true, request) != nil
        let arguments = exists ? ["checkout", work, "--"] : ["checkout", "-b", work]
        try await git(arguments, in: layout.workspace(request.sessionId), sandboxed: true, label: "git checkout \(work)", request)
    }

    private func clone(_ repo: RepoSource, _ request: WorkspaceRequest) async throws(SetupFailure) {
        try refuseInsideDataDirectory(repo, request)
        try await git(
            // --no-hardlinks: a local source's object files must not be shared with a workspace
            // that the agent may write to.
            ["clone", "--no-checkout", "--no-hardlinks", "--origin", "origin", "--", repo.url, layout.workspace(request.sessionId).path],
            label: "git clone \(Self.displayURL(repo.url))", request
        )
    }

    /// A local repository inside the data directory (another session's workspace or HOME) is
    /// never cloned: that would hand one session another's files.
    func refuseInsideDataDirectory(_ repo: RepoSource, _ request: WorkspaceRequest) throws(SetupFailure) {
        guard let path = Self.localPath(repo.url), let resolved = Self.realPath(path),
            let root = Self.realPath(layout.dataDirectory.path), resolved == root || resolved.hasPrefix(root + "/")
        else { return }
        throw fail(
            request,
            SetupFailure(
                command: "git clone \(Self.displayURL(repo.url))", exitCode: 128,
                outputTail: "refused: the repository is inside the control plane's data directory"
            ))
    }

    /// The filesystem path a local path or `file://` URL names; nil for any other URL.
    static func localPath(_ url: String) -> String? {
        if url.hasPrefix("/") { return url }
        guard url.lowercased().hasPrefix("file://") else { return nil }
        return URL(string: url)?.path ?? String(url.dropFirst("file://".count))
    }

    /// The path with every symlink and `..` resolved as the kernel would; nil when it does not exist.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// The branch to check out first: `repo.branch` (which must exist), else the clone's default
    /// branch; nil for an empty repository without a requested branch.
    private func baseBranch(_ repo: RepoSource, _ request: WorkspaceRequest) async throws(SetupFailure) -> String? {
        if let branch = repo.branch {
            guard await remoteBranchExists(branch, request) else {
                throw fail(
                    request,
                    SetupFailure(
                        command: "git checkout \(branch)", exitCode: 1,
                        outputTail: Redaction.redact("branch '\(branch)' does not exist in \(Self.displayURL(repo.url))", secrets: request.redactedValues)
                    ))
            }
            return branch
        }
        guard let head = await gitOutput(["symbolic-ref", "--quiet", "--short", "HEAD"], request),
            await remoteBranchExists(head, request)
        else { return nil }
        return head
    }

    private func remoteBranchExists(_ branch: String, _ request: WorkspaceRequest) async -> Bool {
        await gitOutput(["rev-parse", "--verify", "--quiet", "refs/remotes/origin/\(branch)^{commit}"], request) != nil
    }

    // MARK: - Running git and setup commands

    private func git(
        _ arguments: [String], in directory: URL? = nil, sandboxed: Bool = false, label: String, _ request: WorkspaceRequest
    ) async throws(SetupFailure) {
        let outcome = await runGit(arguments, in: directory, sandboxed: sandboxed, request)
        guard !outcome.succeeded else { return }
        throw fail(request, failure(label: label, outcome: outcome, timeoutMs: gitTimeoutMs, request))
    }

    /// The trimmed output of a git query in the workspace, or nil when it fails.
    private func gitOutput(_ arguments: [String], sandboxed: Bool = false, _ request: WorkspaceRequest) async -> String? {
        let outcome = await runGit(arguments, in: layout.workspace(request.sessionId), sandboxed: sandboxed, request)
        guard outcome.succeeded else { return nil }
        return outcome.output.text(redacting: []).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs git. On the host (`sandboxed: false`, only on a fresh clone or the control plane's
    /// mirror) with the token for the session's repo URL; in the sandbox (on the agent's
    /// workspace) with neither the token nor any of the control plane's environment, its hooks
    /// and fsmonitor off (they would run inside the sandbox anyway).
    func runGit(
        _ arguments: [String], in directory: URL?, sandboxed: Bool, _ request: WorkspaceRequest, standardOutput: FileDescriptor? = nil
    ) async -> CommandOutcome {
        var argv = ["git", "-c", "core.askPass=", "-c", "credential.helper="]
        var environment: [String: String]
        if sandboxed {
            argv += ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
            environment = Self.sandboxedGitEnvironment(home: layout.home(request.sessionId))
        } else {
            environment = Self.gitEnvironment()
            if let repo = request.repo, let token = repo.token, !token.isEmpty, let scope = CredentialScope(url: repo.url) {
                argv += Self.credentialOptions
                environment["CLOUD_AGENT_GIT_TOKEN"] = token
                environment["CLOUD_AGENT_GIT_PROTOCOL"] = scope.protocolName
                environment["CLOUD_AGENT_GIT_HOST"] = scope.host
            }
        }
        argv += arguments
        if sandboxed {
            argv = sandbox.wrap(argv, workspace: layout.workspace(request.sessionId), home: layout.home(request.sessionId))
        }
        let workingDirectory = directory ?? layout.workspacesDirectory
        let timeout = Duration.milliseconds(gitTimeoutMs)
        if let standardOutput {
            return await CommandRunner.run(argv, environment: environment, workingDirectory: workingDirectory, timeout: timeout, standardOutput: standardOutput)
        }
        return await CommandRunner.run(argv, environment: environment, workingDirectory: workingDirectory, timeout: timeout)
    }

    /// The credential helper (after the configured ones are reset): it answers with the token
    /// from the git process's own environment (`CLOUD_AGENT_GIT_TOKEN`), and only when git asks
    /// for the protocol and host of the session's repo URL (`CLOUD_AGENT_GIT_PROTOCOL`,
    /// `CLOUD_AGENT_GIT_HOST`): a redirect or a URL rewritten elsewhere gets nothing.
    static let credentialOptions = [
        "-c", "credential.helper=",
        "-c",
        #"credential.helper=!f() { test "$1" = get || exit 0; p=; h=; while IFS= read -r l && test -n "$l"; do case "$l" in protocol=*) p="${l#protocol=}";; host=*) h="${l#host=}";; esac; done; test "$p" = "$CLOUD_AGENT_GIT_PROTOCOL" && test "$h" = "$CLOUD_AGENT_GIT_HOST" || exit 0; echo username=x-access-token; echo "password=$CLOUD_AGENT_GIT_TOKEN"; }; f"#,
    ]

    /// The protocol and host (with its port, as git's credential protocol names it) a token is
    /// offered to; nil for a URL git never asks credentials for (a local path, `file://`).
    struct CredentialScope: Equatable {
        var protocolName: String
        var host: String

        init?(url: String) {
            guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
                scheme == "https" || scheme == "http", let host = components.host, !host.isEmpty
            else { return nil }
            protocolName = scheme
            self.host = components.port.map { "\(host):\($0)" } ?? host
        }
    }

    /// The environment of git in the sandbox: nothing of the control plane's.
    static func sandboxedGitEnvironment(home: URL) -> [String: String] {
        [
            "HOME": home.path, "PATH": sessionPath, "LANG": "C.UTF-8", "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
        ]
    }

    /// What of the control plane's environment git may see: enough to find its configuration,
    /// proxies, CA certificates and an ssh agent; nothing else (no control-plane secrets).
    static func gitEnvironment() -> [String: String] {
        let inherited = ProcessInfo.processInfo.environment
        let passed = [
            "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
            "XDG_CONFIG_HOME", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM",
            "SSH_AUTH_SOCK", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
            "http_proxy", "https_proxy", "no_proxy", "all_proxy",
        ]
        var environment: [String: String] = [:]
        for name in passed { environment[name] = inherited[name] }
        environment["PATH"] = environment["PATH"] ?? sessionPath
        environment["GIT_TERMINAL_PROMPT"] = "0"
        // Only the transports a repo url may name: no `ext::`/`fd::` or other remote helpers
        // (`fd::3` waits on a closed descriptor until the git time limit).
        environment["GIT_ALLOW_PROTOCOL"] = "file:git:http:https:ssh"
        // Empty: no askpass program (not even core.askPass or SSH_ASKPASS) is ever run.
        environment["GIT_ASKPASS"] = ""
        environment["GCM_INTERACTIVE"] = "never"
        if environment["GIT_SSH_COMMAND"] == nil, environment["GIT_SSH"] == nil {
            environment["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
        }
        return environment
    }

    /// Runs one setup command (`/bin/sh -c`) in the workspace, in the sandbox; nil when it succeeds.
    private func runSetupCommand(_ command: String, _ request: WorkspaceRequest) async -> SetupFailure? {
        let workspace = layout.workspace(request.sessionId)
        let home = layout.home(request.sessionId)
        var environment = request.environment
        environment["HOME"] = home.path
        environment["SESSION_HOME"] = home.path
        environment["SESSION_ID"] = request.sessionId.rawValue
        environment["PATH"] = Self.sessionPath
        let argv = sandbox.wrap(["/bin/sh", "-c", command], workspace: workspace, home: home)
        let timeoutMs = max(1, request.setupTimeoutMs)
        let outcome = await CommandRunner.run(argv, environment: environment, workingDirectory: workspace, timeout: .milliseconds(timeoutMs))
        guard !outcome.succeeded else { return nil }
        return fail(request, failure(label: command, outcome: outcome, timeoutMs: timeoutMs, request))
    }

    private func failure(label: String, outcome: CommandOutcome, timeoutMs: Int64, _ request: WorkspaceRequest) -> SetupFailure {
        let note = outcome.timedOut ? "timed out after \(Self.durationText(timeoutMs))" : nil
        return SetupFailure(
            command: Redaction.redact(label, secrets: request.redactedValues),
            exitCode: outcome.exitCode,
            outputTail: outcome.output.text(redacting: request.redactedValues, note: note)
        )
    }

    /// Logs the failed step (never its output) and returns it.
    private func fail(_ request: WorkspaceRequest, _ failure: SetupFailure) -> SetupFailure {
        logger.warning(
            "workspace step failed",
            metadata: [
                "sessionId": "\(request.sessionId)",
                "command": "\(failure.command)",
                "exitCode": "\(failure.exitCode)",
            ])
        return failure
    }

    static func durationText(_ milliseconds: Int64) -> String {
        milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(milliseconds) ms"
    }

    /// The URL as shown in a step's name: a password in it (which the control plane rejects
    /// anyway) is masked.
    static func displayURL(_ url: String) -> String {
        guard let scheme = url.range(of: "://"),
            let at = url[scheme.upperBound...].firstIndex(of: "@"),
            !url[scheme.upperBound..<at].contains("/"),
            url[scheme.upperBound..<at].contains(":")
        else { return url }
        return url[..<scheme.upperBound] + "***" + url[at...]
    }
}
