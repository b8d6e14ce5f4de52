import CloudAgentCore

/// The repository a session works on. `token` is a git credential: it reaches git only through
/// a credential helper's environment, never a URL, `.git/config`, a log line or a failure.
public struct RepoSource: Sendable, Equatable {
    /// An https, ssh or file URL, or a local path. Never carries credentials.
    public var url: String
    /// An existing upstream branch to work from; nil for the repository's default branch.
    public var branch: String?
    public var token: String?

    public init(url: String, branch: String? = nil, token: String? = nil) {
        self.url = url
        self.branch = branch
        self.token = token
    }
}

/// Everything needed to prepare or restore one session's workspace.
public struct WorkspaceRequest: Sendable {
    public var sessionId: SessionID
    public var repo: RepoSource?
    /// The branch the session works on: `repo.branch`, or `session/<sessionId>`.
    public var workBranch: String
    /// The session's envVars and decrypted secrets, for the setup commands.
    public var environment: [String: String]
    /// Values masked as `***` in any output that is kept.
    public var secretValues: [String]
    public var setupCommands: [String]
    /// Time limit of each setup command.
    public var setupTimeoutMs: Int64

    public init(
        sessionId: SessionID,
        repo: RepoSource?,
        workBranch: String,
        environment: [String: String],
        secretValues: [String],
        setupCommands: [String],
        setupTimeoutMs: Int64 = 120_000
    ) {
        self.sessionId = sessionId
        self.repo = repo
        self.workBranch = workBranch
        self.environment = environment
        self.secretValues = secretValues
        self.setupCommands = setupCommands
        self.setupTimeoutMs = setupTimeoutMs
    }

    /// Every value masked in kept output: the secrets and the git token.
    var redactedValues: [String] {
        secretValues + [repo?.token].compactMap { $0 }
    }
}

/// A workspace step that failed: a git step (`git clone <url>`, `git checkout <branch>`, …) or a
/// setup command. `outputTail` is at most 4 KiB of the end of its output, secrets masked; a
/// command that ran out of time has exit code 124 and a tail that says so.
public struct SetupFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var command: String
    public var exitCode: Int32
    public var outputTail: String

    public init(command: String, exitCode: Int32, outputTail: String) {
        self.command = command
        self.exitCode = exitCode
        self.outputTail = outputTail
    }

    /// The exit code of a command stopped at its time limit (as `timeout(1)` reports it).
    public static let timeoutExitCode: Int32 = 124

    public var description: String {
        "setup step failed: \(command) (exit code \(exitCode))"
    }
}
