import CloudAgentTestSupport
import CloudAgentCore
@testable import CloudAgentSandbox
import Foundation
import Testing

@Suite("Preparing a workspace", .processes)
struct PrepareTests {
    @Test("clones a local path onto a new work branch session/<id> from the default branch")
    func cloneLocalPath() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: source.path)))

        let workspace = fixture.layout.workspace(id)
        #expect(contents(workspace.appendingPathComponent("a.txt")) == "a\n")
        #expect(!exists(workspace.appendingPathComponent("b.txt")))
        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "session/\(id)")
        #expect(try await fixture.git("rev-parse HEAD", id) == (try await sh("git rev-parse main", in: source)))
        #expect(try await fixture.git("status --porcelain", id) == "")
        #expect(exists(fixture.layout.home(id)))
    }

    @Test("clones a file:// URL and checks out the existing branch it names")
    func cloneFileURLExistingBranch() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: source.absoluteString, branch: "dev"), workBranch: "dev"))

        let workspace = fixture.layout.workspace(id)
        #expect(source.absoluteString.hasPrefix("file://"))
        #expect(contents(workspace.appendingPathComponent("b.txt")) == "b\n")
        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "dev")
        #expect(try await fixture.git("rev-parse --abbrev-ref dev@{upstream}", id) == "origin/dev")
        #expect(try await fixture.git("status --porcelain", id) == "")
    }

    @Test("a new work branch starts from the named branch")
    func workBranchFromNamedBranch() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: source.path, branch: "dev")))

        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "session/\(id)")
        #expect(try await fixture.git("rev-parse HEAD", id) == (try await sh("git rev-parse dev", in: source)))
        #expect(exists(fixture.layout.workspace(id).appendingPathComponent("b.txt")))
    }

    @Test("a branch that does not exist fails as `git checkout <branch>` and leaves nothing on disk")
    func missingBranch() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        let failure = await #expect(throws: SetupFailure.self) {
            try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: source.path, branch: "nope")))
        }
        #expect(failure?.command == "git checkout nope")
        #expect(failure?.exitCode != 0)
        #expect(failure?.outputTail.contains("nope") == true)
        #expect(!exists(fixture.layout.workspace(id)))
        #expect(!exists(fixture.layout.home(id)))
        #expect(fixture.logs.text.contains("command=git checkout nope"))
        #expect(fixture.logs.text.contains("sessionId=\(id)"))
    }

    @Test("a repository that cannot be cloned fails as `git clone <url>`")
    func cloneFailure() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        let missing = fixture.directory.path("missing").path
        let failure = await #expect(throws: SetupFailure.self) {
            try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: missing)))
        }
        #expect(failure?.command == "git clone \(missing)")
        #expect(failure?.exitCode == 128)
        #expect(!exists(fixture.layout.workspace(id)))
        #expect(!exists(fixture.layout.home(id)))
    }

    @Test("without a repo the workspace is a new git repository on the work branch")
    func noRepo() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id))
        #expect(exists(fixture.layout.workspace(id).appendingPathComponent(".git")))
        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "session/\(id)")
    }

    @Test("setup commands run in the workspace with the session's variables, secrets, HOME, SESSION_HOME and SESSION_ID")
    func setupEnvironment() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        try await fixture.workspaces.prepare(
            fixture.request(
                id, environment: ["GREETING": "hello world", "API_KEY": "s3cr3t-value"], secrets: ["s3cr3t-value"],
                setup: [
                    #"printf '%s\n' "$GREETING" "$API_KEY" "$HOME" "$SESSION_HOME" "$SESSION_ID" "$PATH" "$(pwd)" > seen.txt"#,
                    "echo second >> seen.txt",
                ]
            ))
        let lines = contents(fixture.layout.workspace(id).appendingPathComponent("seen.txt")).split(separator: "\n").map(String.init)
        #expect(
            lines == [
                "hello world", "s3cr3t-value",
                fixture.layout.home(id).path, fixture.layout.home(id).path, id.rawValue,
                GitWorkspaces.sessionPath, fixture.layout.workspace(id).path, "second",
            ])
    }

    @Test("setup commands see nothing of the control plane's environment")
    func setupEnvironmentIsolated() async throws {
        setenv("CLOUD_AGENT_TEST_CONTROL_PLANE_SECRET", "cp-secret", 1)
        let fixture = try Fixture()
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id, environment: ["ONLY": "this"], setup: ["env > env.txt"]))
        let names = Set(
            contents(fixture.layout.workspace(id).appendingPathComponent("env.txt"))
                .split(separator: "\n").compactMap { $0.split(separator: "=").first.map(String.init) })
        #expect(!names.contains("CLOUD_AGENT_TEST_CONTROL_PLANE_SECRET"))
        #expect(names.isSuperset(of: ["ONLY", "HOME", "SESSION_HOME", "SESSION_ID", "PATH"]))
    }

    @Test("a setup command that leaves a background process does not hang the setup, and the process is stopped")
    func setupBackgroundProcess() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        let started = ContinuousClock.now
        try await fixture.workspaces.prepare(fixture.request(id, setup: ["sh -c 'echo $$ > bg.pid; exec sleep 60' & echo started"]))
        #expect(ContinuousClock.now - started < .seconds(30))
        let pidFile = fixture.layout.workspace(id).appendingPathComponent("bg.pid")
        if let pid = Int32(contents(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)) {
            #expect(try await holdsWithin(seconds: 20) { !(ProcStat.read(pid)?.isRunning ?? false) })
        }
    }

    @Test("a local clone copies the objects instead of hard-linking them to the source")
    func noHardlinks() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: source.path)))
        let objects = try await sh("find .git/objects -type f -links +1 | wc -l", in: fixture.layout.workspace(id))
        #expect(objects == "0")
    }

    @Test("a failing setup command: its command, exit code and redacted tail; the rest is not run; nothing kept")
    func failingSetupCommand() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        let failing = #"echo "using token $API_KEY"; echo "to stderr" >&2; exit 3"#
        let failure = await #expect(throws: SetupFailure.self) {
            try await fixture.workspaces.prepare(
                fixture.request(
                    id, repo: RepoSource(url: source.path), environment: ["API_KEY": "s3cr3t-value"], secrets: ["s3cr3t-value"],
                    setup: ["echo first > first.txt", failing, "touch \(fixture.directory.path("never-run").path)"]
                ))
        }
        #expect(failure?.command == failing)
        #expect(failure?.exitCode == 3)
        #expect(failure?.outputTail == "using token ***\nto stderr\n")
        #expect(!exists(fixture.directory.path("never-run")))
        #expect(!exists(fixture.layout.workspace(id)))
        #expect(!exists(fixture.layout.home(id)))
        #expect(fixture.logs.text.contains("exitCode=3"))
        #expect(!fixture.logs.text.contains("s3cr3t-value"))
    }

    @Test("the output tail is at most 4 KiB: the end of the output")
    func longOutputTail() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        let failure = await #expect(throws: SetupFailure.self) {
            try await fixture.workspaces.prepare(
                fixture.request(
                    id, setup: [#"i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; exit 1"#]
                ))
        }
        let tail = try #require(failure?.outputTail)
        #expect(tail.utf8.count <= 4096)
        #expect(tail.utf8.count > 4000)
        #expect(tail.hasSuffix("line 2999\n"))
        #expect(!tail.contains("line 1\n"))
    }

    @Test("a setup command over its time limit is stopped with exit code 124, with its children")
    func setupTimeout() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        let pidFile = fixture.directory.path("background.pid")
        let started = ContinuousClock.now
        let failure = await #expect(throws: SetupFailure.self) {
            try await fixture.workspaces.prepare(
                fixture.request(
                    id, setup: ["echo begun; sh -c 'echo $$ > \(pidFile.path); exec sleep 60' & sleep 60"], timeoutMs: 500
                ))
        }
        #expect(ContinuousClock.now - started < .seconds(15))
        #expect(failure?.exitCode == 124)
        #expect(failure?.outputTail.hasPrefix("begun\n") == true)
        #expect(failure?.outputTail.hasSuffix("timed out after 500 ms") == true)
        #expect(!exists(fixture.layout.workspace(id)))
        // The background child went with the command's process group.
        if let pid = Int32(contents(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)) {
            #expect(try await holdsWithin(seconds: 20) { !(ProcStat.read(pid)?.isRunning ?? false) })
        }
    }

    @Test("the repository token is neither in .git/config, nor in a failure, nor in a log line")
    func tokenNeverStored() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let token = "ghp_TOKEN-never-stored-123"
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: source.absoluteString, token: token)))
        let config = contents(fixture.layout.workspace(id).appendingPathComponent(".git/config"))
        #expect(config.contains(source.absoluteString))
        #expect(!config.contains(token))
        #expect(!config.contains("credential"))

        let other = SessionID()
        let failure = await #expect(throws: SetupFailure.self) {
            try await fixture.workspaces.prepare(
                fixture.request(
                    other, repo: RepoSource(url: source.absoluteString, branch: "nope", token: token),
                    setup: ["echo never"]
                ))
        }
        #expect(failure?.command == "git checkout nope")
        #expect(failure.map { "\($0.command) \($0.outputTail)" }?.contains(token) == false)

        let third = SessionID()
        let setupFailure = await #expect(throws: SetupFailure.self) {
            try await fixture.workspaces.prepare(
                fixture.request(
                    third, repo: RepoSource(url: source.absoluteString, token: token), environment: ["T": token],
                    setup: ["echo $T; exit 1"]
                ))
        }
        #expect(setupFailure?.outputTail == "***\n")
        #expect(!fixture.logs.text.contains(token))
    }

    @Test(
        "the token reaches git through the credential helper, for the repo URL's protocol and host only",
        arguments: [
            ("https", "git.example.com", true), ("https", "evil.example.com", false), ("http", "git.example.com", false),
            ("https", "git.example.com:8443", false),
        ])
    func credentialHelperDeliversToken(scheme: String, host: String, answers: Bool) async throws {
        // git asks its helper for credentials only over http(s); run the helper command line
        // the way git would and read what it answers.
        let fixture = try Fixture()
        let id = SessionID()
        try await fixture.workspaces.prepare(fixture.request(id))
        let scope = try #require(GitWorkspaces.CredentialScope(url: "https://git.example.com/team/repo.git"))
        let answer = try? await sh(
            #"printf 'protocol=\#(scheme)\nhost=\#(host)\n\n' | git \#(GitWorkspaces.credentialOptions.map { "'\($0)'" }.joined(separator: " ")) credential fill"#,
            in: fixture.layout.workspace(id),
            environment: [
                "CLOUD_AGENT_GIT_TOKEN": "tok-123", "GIT_TERMINAL_PROMPT": "0",
                "CLOUD_AGENT_GIT_PROTOCOL": scope.protocolName, "CLOUD_AGENT_GIT_HOST": scope.host,
            ]
        )
        #expect((answer?.contains("password=tok-123") ?? false) == answers, "\(answer ?? "git asked for a prompt")")
    }

    @Test("a token is offered to http(s) URLs only, with their port")
    func credentialScopes() {
        let port = GitWorkspaces.CredentialScope(url: "https://git.example.com:8443/r.git")
        #expect(port?.protocolName == "https")
        #expect(port?.host == "git.example.com:8443")
        #expect(GitWorkspaces.CredentialScope(url: "HTTP://Git.example.com/r.git")?.protocolName == "http")
        #expect(GitWorkspaces.CredentialScope(url: "/srv/repo.git") == nil)
        #expect(GitWorkspaces.CredentialScope(url: "file:///srv/repo.git") == nil)
        #expect(GitWorkspaces.CredentialScope(url: "ssh://git@example.com/r.git") == nil)
    }
}

@Suite("Restoring a workspace", .processes)
struct RestoreTests {
    /// A bare origin, a session prepared from it on `session/<id>`, one commit pushed from it.
    private func preparedAndPushed(_ fixture: Fixture, _ id: SessionID) async throws -> (origin: URL, pushed: String) {
        let source = try await makeRepository(in: fixture.directory)
        let origin = fixture.directory.path("origin.git")
        try await sh("git clone --quiet --bare \(source.path) \(origin.path)", in: fixture.directory.url)
        try await fixture.workspaces.prepare(fixture.request(id, repo: RepoSource(url: origin.absoluteString)))
        let workspace = fixture.layout.workspace(id)
        try await sh("echo work > work.txt && git add work.txt && \(commit) -m work && git push --quiet origin session/\(id)", in: workspace)
        return (origin, try await fixture.git("rev-parse HEAD", id))
    }

    @Test("after the workspace was deleted, the pushed work branch comes back with its commit")
    func restorePushedBranch() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        let (origin, pushed) = try await preparedAndPushed(fixture, id)
        fixture.layout.remove(id)
        #expect(!exists(fixture.layout.workspace(id)))

        let failures = await fixture.workspaces.restore(fixture.request(id, repo: RepoSource(url: origin.absoluteString)))
        #expect(failures == [])
        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "session/\(id)")
        #expect(try await fixture.git("rev-parse HEAD", id) == pushed)
        #expect(contents(fixture.layout.workspace(id).appendingPathComponent("work.txt")) == "work\n")
        #expect(exists(fixture.layout.home(id)))
    }

    @Test("a work branch never pushed is created again from the named branch")
    func restoreUnpushedBranch() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        let failures = await fixture.workspaces.restore(fixture.request(id, repo: RepoSource(url: source.path, branch: "dev")))
        #expect(failures == [])
        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "session/\(id)")
        #expect(try await fixture.git("rev-parse HEAD", id) == (try await sh("git rev-parse dev", in: source)))
    }

    @Test("a failing setup command during restore is returned, not thrown, and the others still run")
    func restoreLenientSetup() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        let (origin, _) = try await preparedAndPushed(fixture, id)
        fixture.layout.remove(id)

        let failures = await fixture.workspaces.restore(
            fixture.request(
                id, repo: RepoSource(url: origin.absoluteString), environment: ["K": "hidden-value"], secrets: ["hidden-value"],
                setup: ["echo $K; exit 7", "touch after.txt"]
            ))
        #expect(failures == [SetupFailure(command: "echo $K; exit 7", exitCode: 7, outputTail: "***\n")])
        #expect(exists(fixture.layout.workspace(id).appendingPathComponent("work.txt")))
        #expect(exists(fixture.layout.workspace(id).appendingPathComponent("after.txt")))
    }

    @Test("a workspace that still has its .git is kept as it is, on the work branch")
    func restoreKeepsExistingWorkspace() async throws {
        let fixture = try Fixture()
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        let request = fixture.request(id, repo: RepoSource(url: source.path))
        try await fixture.workspaces.prepare(request)
        let workspace = fixture.layout.workspace(id)
        try await sh("echo draft > draft.txt && git checkout --quiet main", in: workspace)

        let failures = await fixture.workspaces.restore(request)
        #expect(failures == [])
        #expect(contents(workspace.appendingPathComponent("draft.txt")) == "draft\n")
        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "session/\(id)")
    }

    @Test("a repository that cannot be cloned is returned as a failure; the workspace exists, empty")
    func restoreCloneFailure() async throws {
        let fixture = try Fixture()
        let id = SessionID()
        let missing = fixture.directory.path("gone.git").path
        let failures = await fixture.workspaces.restore(fixture.request(id, repo: RepoSource(url: missing), setup: ["touch x"]))
        #expect(failures.map(\.command) == ["git clone \(missing)"])
        #expect(exists(fixture.layout.workspace(id)))
        #expect(!exists(fixture.layout.workspace(id).appendingPathComponent("x")))
    }
}

@Suite("Workspace layout")
struct WorkspaceLayoutTests {
    @Test("paths under the data directory, and remove deletes all three")
    func layout() throws {
        let directory = try TemporaryDirectory()
        let layout = WorkspaceLayout(dataDirectory: directory.url)
        let id = SessionID()
        #expect(layout.workspace(id).path == directory.url.path + "/workspaces/\(id)")
        #expect(layout.home(id).path == directory.url.path + "/homes/\(id)")
        #expect(layout.runtimeLog(id).path == directory.url.path + "/runtimes/\(id).log")
        for url in [layout.workspace(id), layout.home(id)] {
            try FileManager.default.createDirectory(at: url.appendingPathComponent("sub"), withIntermediateDirectories: true)
        }
        try FileManager.default.createDirectory(at: layout.runtimesDirectory, withIntermediateDirectories: true)
        try Data("log".utf8).write(to: layout.runtimeLog(id))
        layout.remove(id)
        #expect(!exists(layout.workspace(id)))
        #expect(!exists(layout.home(id)))
        #expect(!exists(layout.runtimeLog(id)))
        #expect(exists(layout.workspacesDirectory))
    }
}
