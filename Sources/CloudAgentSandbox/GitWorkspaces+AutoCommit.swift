import CloudAgentCore
import Foundation

/// What auto-commit did after an execution.
public enum AutoCommitOutcome: Sendable, Equatable {
    /// The workspace had no changes.
    case nothingToCommit
    /// A commit was made on the work branch; `pushError` is set when the push to the remote
    /// failed, `pushed` is false when there is no remote.
    case committed(sha: String, pushed: Bool, pushError: String?)
    /// Committing itself failed.
    case failed(step: String, detail: String)
}

extension GitWorkspaces {
    static let author = ["-c", "user.name=cloud-agent", "-c", "user.email=cloud-agent@localhost"]

    /// Commits every change in the workspace on the work branch, with a message naming the
    /// execution, and pushes it to `origin` when the workspace has one. Git runs in the sandbox
    /// with hooks disabled (the agent wrote the workspace); the token reaches git as on clone.
    public func autoCommit(_ request: WorkspaceRequest, executionId: String, summary: String) async -> AutoCommitOutcome {
        let workspace = layout.workspace(request.sessionId)
        func run(_ arguments: [String]) async -> CommandOutcome {
            await runGit(arguments, in: workspace, sandboxed: true, request)
        }
        func detail(_ outcome: CommandOutcome) -> String {
            outcome.output.text(redacting: request.secretValues + (request.repo?.token.map { [$0] } ?? []))
        }
        let status = await run(["status", "--porcelain"])
        guard status.succeeded else { return .failed(step: "git status", detail: detail(status)) }
        guard !status.output.text(redacting: []).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return .nothingToCommit }
        let added = await run(["add", "-A"])
        guard added.succeeded else { return .failed(step: "git add", detail: detail(added)) }
        let firstLine = summary.split(separator: "\n", maxSplits: 1).first.map { String($0.prefix(72)) } ?? ""
        let message = "cloud-agent: execution \(executionId)\n\n\(firstLine)\n\nSession: \(request.sessionId.rawValue)\nExecution: \(executionId)\n"
        let committed = await run(Self.author + ["commit", "--no-verify", "-q", "-m", message])
        guard committed.succeeded else { return .failed(step: "git commit", detail: detail(committed)) }
        let head = await run(["rev-parse", "HEAD"])
        let sha = head.output.text(redacting: []).trimmingCharacters(in: .whitespacesAndNewlines)
        let remote = await run(["remote", "get-url", "origin"])
        guard remote.succeeded else { return .committed(sha: sha, pushed: false, pushError: nil) }
        // The push runs outside the sandbox (which hides local paths a remote may live at), with
        // the workspace's hooks disabled.
        let pushed = await runGit(
            ["-c", "core.hooksPath=/dev/null", "push", "-q", "origin", "HEAD:refs/heads/\(request.workBranch)"],
            in: workspace, sandboxed: false, request
        )
        guard pushed.succeeded else { return .committed(sha: sha, pushed: false, pushError: detail(pushed)) }
        return .committed(sha: sha, pushed: true, pushError: nil)
    }
}
