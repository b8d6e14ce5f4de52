import CloudAgentCore
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What auto-commit did after an execution.
public enum AutoCommitOutcome: Sendable, Equatable {
    /// The workspace had no changes.
    case nothingToCommit
    /// A commit was made on the work branch; `pushError` is set when the push to the remote
    /// failed, `pushed` is false when the session has no remote.
    case committed(sha: String, pushed: Bool, pushError: String?)
    /// Committing itself failed.
    case failed(step: String, detail: String)
}

extension GitWorkspaces {
    static let author = ["-c", "user.name=cloud-agent", "-c", "user.email=cloud-agent@localhost"]

    /// Commits every change in the workspace on the work branch, with a message naming the
    /// execution, and pushes it to the session's repo URL when it has one.
    ///
    /// Committing is git on the agent's repository, so it runs in the sandbox, without the
    /// token. Pushing is done without ever letting host-side git read that repository:
    /// 1. in the sandbox, `git bundle create - HEAD` writes the work to its standard output,
    ///    which is a file of the control plane's (the sandbox never sees the file's path);
    /// 2. on the host, git fetches that bundle into the session's mirror, a bare repository the
    ///    control plane made and owns (`mirrors/<sessionId>.git`), checking every object. A
    ///    bundle is data: reading it runs nothing and reads no configuration of the workspace
    ///    (no `uploadpack`, `receivepack`, hooks, filters, `fsmonitor`, alternates, includes);
    /// 3. on the host, git pushes the work branch from the mirror to the URL of the session's
    ///    spec (never the workspace's `origin`), with the token offered to that URL's host only.
    public func autoCommit(_ request: WorkspaceRequest, executionId: String, summary: String) async -> AutoCommitOutcome {
        let workspace = layout.workspace(request.sessionId)
        func run(_ arguments: [String]) async -> CommandOutcome {
            await runGit(arguments, in: workspace, sandboxed: true, request)
        }
        let status = await run(["status", "--porcelain"])
        guard status.succeeded else { return .failed(step: "git status", detail: detail(status, request)) }
        guard !status.output.text(redacting: []).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return .nothingToCommit }
        let added = await run(["add", "-A"])
        guard added.succeeded else { return .failed(step: "git add", detail: detail(added, request)) }
        let firstLine = summary.split(separator: "\n", maxSplits: 1).first.map { String($0.prefix(72)) } ?? ""
        let message = "cloud-agent: execution \(executionId)\n\n\(firstLine)\n\nSession: \(request.sessionId.rawValue)\nExecution: \(executionId)\n"
        let committed = await run(Self.author + ["commit", "--no-verify", "-q", "-m", message])
        guard committed.succeeded else { return .failed(step: "git commit", detail: detail(committed, request)) }
        let head = await run(["rev-parse", "HEAD"])
        let sha = head.output.text(redacting: []).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let repo = request.repo else { return .committed(sha: sha, pushed: false, pushError: nil) }
        if let error = await push(request, repo: repo) { return .committed(sha: sha, pushed: false, pushError: error) }
        return .committed(sha: sha, pushed: true, pushError: nil)
    }

    /// Brings the workspace's HEAD into the mirror as the work branch and pushes that to the
    /// repo URL; the error's text when a step fails.
    func push(_ request: WorkspaceRequest, repo: RepoSource) async -> String? {
        let mirror = layout.mirror(request.sessionId)
        do {
            try refuseInsideDataDirectory(repo, request)
        } catch {
            return error.outputTail
        }
        if !FileManager.default.fileExists(atPath: mirror.appendingPathComponent("HEAD").path) {
            try? FileManager.default.removeItem(at: mirror)
            let created = await runGit(["init", "--quiet", "--bare", mirror.path], in: layout.dataDirectory, sandboxed: false, request)
            guard created.succeeded else { return "git init --bare: " + detail(created, request) }
        }
        let bundle = mirror.appendingPathComponent("incoming.bundle")
        defer { try? FileManager.default.removeItem(at: bundle) }
        try? FileManager.default.removeItem(at: bundle)
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(
                FilePath(bundle.path), .writeOnly, options: [.create, .exclusiveCreate, .noFollow, .closeOnExec], permissions: [.ownerReadWrite]
            )
        } catch {
            return "cannot create \(bundle.lastPathComponent): \(error)"
        }
        let bundled = await runGit(
            ["bundle", "create", "--quiet", "-", "HEAD"], in: layout.workspace(request.sessionId), sandboxed: true, request,
            standardOutput: descriptor
        )
        try? descriptor.close()
        guard bundled.succeeded else { return "git bundle: " + detail(bundled, request) }
        let work = "refs/heads/\(request.workBranch)"
        let fetched = await runGit(
            [
                "-c", "transfer.fsckObjects=true", "-c", "fetch.fsckObjects=true", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                bundle.path, "+HEAD:\(work)",
            ],
            in: mirror, sandboxed: false, request
        )
        guard fetched.succeeded else { return "git fetch (bundle): " + detail(fetched, request) }
        let pushed = await runGit(
            ["-c", "core.hooksPath=/dev/null", "push", "--quiet", "--no-verify", "--", repo.url, "\(work):\(work)"],
            in: mirror, sandboxed: false, request
        )
        guard pushed.succeeded else { return detail(pushed, request) }
        return nil
    }

    private func detail(_ outcome: CommandOutcome, _ request: WorkspaceRequest) -> String {
        outcome.output.text(redacting: request.secretValues + (request.repo?.token.map { [$0] } ?? []))
    }
}
