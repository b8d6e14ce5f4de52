import CloudAgentTestSupport
import CloudAgentCore
@testable import CloudAgentSandbox
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("The sandbox wrapper", .processes)
struct SandboxWrapperTests {
    @Test("none leaves the command line unchanged")
    func noneUnchanged() {
        let wrapper = SandboxWrapper(kind: .none, dataDirectory: URL(fileURLWithPath: "/data"))
        let argv = ["/bin/sh", "-c", "echo hi"]
        #expect(wrapper.wrap(argv, workspace: URL(fileURLWithPath: "/data/workspaces/a"), home: URL(fileURLWithPath: "/data/homes/a")) == argv)
    }

    @Test("bwrap: an empty root with the system read-only, the session's own directories read-write, no data directory, a user namespace, network shared")
    func bwrapCommandLine() throws {
        let wrapper = SandboxWrapper(kind: .bwrap, dataDirectory: URL(fileURLWithPath: "/data"))
        let argv = wrapper.wrap(
            ["/bin/sh", "-c", "echo hi"], workspace: URL(fileURLWithPath: "/data/workspaces/a"), home: URL(fileURLWithPath: "/data/homes/a"))
        #expect(argv.first?.hasSuffix("bwrap") == true)
        let text = argv.joined(separator: " ")
        #expect(!text.contains("--ro-bind / /"), "the host's root is never bound")
        #expect(text.contains("--ro-bind /usr /usr"))
        #expect(text.contains("--ro-bind /etc /etc"))
        #expect(text.contains("--bind /data/workspaces/a /data/workspaces/a --bind /data/homes/a /data/homes/a"))
        #expect(!argv.contains("/data"), "the data directory itself is not mounted")
        #expect(text.contains("--tmpfs /tmp"))
        #expect(text.contains("--unshare-user --uid 1000 --gid 1000"))
        #expect(text.contains("--unshare-pid --unshare-ipc --unshare-uts"))
        #expect(text.contains("--cap-drop ALL --new-session --remount-ro / --chdir /data/workspaces/a -- /bin/sh -c echo hi"))
        // The sandbox outlives the control plane (bwrap's parent): a restart must not kill it.
        #expect(!argv.contains("--die-with-parent"))
        #expect(!argv.contains("--unshare-net"))
        #expect(!argv.contains("--unshare-all"))
        if FileManager.default.fileExists(atPath: "/etc/shadow") {
            #expect(text.contains("--ro-bind /dev/null /etc/shadow"))
        }
    }

    @Test("a data directory inside a system directory is hidden there before the session's own directories are bound")
    func dataDirectoryUnderASystemDirectory() {
        let wrapper = SandboxWrapper(kind: .bwrap, dataDirectory: URL(fileURLWithPath: "/opt/cloud-agent"))
        let argv = wrapper.wrap(
            ["/bin/true"], workspace: URL(fileURLWithPath: "/opt/cloud-agent/workspaces/a"), home: URL(fileURLWithPath: "/opt/cloud-agent/homes/a"))
        let hidden = argv.indices.first { argv[$0] == "--tmpfs" && argv[$0 + 1] == "/opt/cloud-agent" }
        let opt = argv.indices.first { argv[$0] == "--ro-bind" && argv[$0 + 1] == "/opt" }
        let workspace = argv.indices.first { argv[$0] == "--bind" && argv[$0 + 1] == "/opt/cloud-agent/workspaces/a" }
        if FileManager.default.fileExists(atPath: "/opt") {
            #expect(opt != nil)
            #expect(hidden != nil && workspace != nil && opt! < hidden! && hidden! < workspace!)
        }
    }

    @Test("resolve: none, and an unknown name is an error that says what is expected")
    func resolveNames() async throws {
        let directory = try TemporaryDirectory()
        #expect(try await SandboxWrapper.resolve("none", dataDirectory: directory.url).kind == .none)
        let error = await #expect(throws: SandboxUnavailable.self) {
            try await SandboxWrapper.resolve("docker", dataDirectory: directory.url)
        }
        #expect(error?.description.contains("bwrap, none or auto") == true)
    }

    @Test("without bubblewrap: auto falls back to none with a warning saying what that means and how to fix it; bwrap refuses")
    func noSilentFallback() async throws {
        let directory = try TemporaryDirectory()
        let missing = directory.path("no-such-bwrap").path
        let auto = try await SandboxWrapper.resolveExplained("auto", dataDirectory: directory.url, bwrapPath: missing)
        #expect(auto.sandbox.kind == .none)
        let warning = try #require(auto.warning)
        #expect(warning.contains("apt-get install bubblewrap"))
        #expect(warning.contains("other sessions"))
        #expect(warning.contains("CLOUD_AGENT_SANDBOX"))
        await #expect(throws: SandboxUnavailable.self) { try await SandboxWrapper.resolveExplained("bwrap", dataDirectory: directory.url, bwrapPath: missing) }
        #expect(try await SandboxWrapper.resolveExplained("none", dataDirectory: directory.url, bwrapPath: missing).warning == nil)
        if await bwrapWorks() {
            #expect(try await SandboxWrapper.resolveExplained("auto", dataDirectory: directory.url).warning == nil)
        }
    }

    @Test("resolve: auto is bwrap exactly where bwrap works, and bwrap throws where it does not")
    func resolveAutoAndBwrap() async throws {
        let directory = try TemporaryDirectory()
        let auto = try await SandboxWrapper.resolve("auto", dataDirectory: directory.url)
        #expect(auto.kind == (await bwrapWorks() ? .bwrap : .none))
        if await bwrapWorks() {
            #expect(try await SandboxWrapper.resolve("bwrap", dataDirectory: directory.url).kind == .bwrap)
        } else {
            await #expect(throws: SandboxUnavailable.self) { try await SandboxWrapper.resolve("bwrap", dataDirectory: directory.url) }
        }
    }
}

/// These run only where bubblewrap works (installed, and namespaces allowed): elsewhere there is
/// no sandbox to test, and `resolve("auto")` falls back to none (checked above).
@Suite("Inside the bubblewrap sandbox", .enabled("bubblewrap is missing or cannot create namespaces on this machine") { await bwrapWorks() }, .processes)
struct BubblewrapTests {
    /// A data directory with two sessions and a key file, and a wrapper for it.
    private struct Sessions {
        let directory: TemporaryDirectory
        let layout: WorkspaceLayout
        let sandbox: SandboxWrapper
        let own = SessionID()
        let other = SessionID()

        init() async throws {
            directory = try TemporaryDirectory("bwrap")
            let data = directory.path("data")
            layout = WorkspaceLayout(dataDirectory: data)
            sandbox = try await SandboxWrapper.resolve("bwrap", dataDirectory: data)
            for url in [layout.workspace(own), layout.home(own), layout.workspace(other), layout.home(other)] {
                try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
            }
            try Data("other's work".utf8).write(to: layout.workspace(other).appendingPathComponent("private.txt"))
            try Data("key".utf8).write(to: data.appendingPathComponent("secret.key"))
        }

        func run(_ script: String, environment: [String: String] = [:]) async -> CommandOutcome {
            let argv = sandbox.wrap(["/bin/sh", "-c", script], workspace: layout.workspace(own), home: layout.home(own))
            return await CommandRunner.run(
                argv, environment: environment.merging(["PATH": GitWorkspaces.sessionPath]) { $1 },
                workingDirectory: layout.workspace(own), timeout: .seconds(60)
            )
        }
    }

    @Test("the workspace and home are writable, and the process starts in the workspace")
    func writable() async throws {
        let sessions = try await Sessions()
        let outcome = await sessions.run(
            "pwd; echo made > made.txt && echo home > \"$H/home.txt\"", environment: ["H": sessions.layout.home(sessions.own).path])
        #expect(outcome.succeeded, "\(outcome.output.text(redacting: []))")
        #expect(outcome.output.text(redacting: []) == sessions.layout.workspace(sessions.own).path + "\n")
        #expect(contents(sessions.layout.workspace(sessions.own).appendingPathComponent("made.txt")) == "made\n")
        #expect(contents(sessions.layout.home(sessions.own).appendingPathComponent("home.txt")) == "home\n")
    }

    @Test("the rest of the file system is read-only")
    func readOnlySystem() async throws {
        let sessions = try await Sessions()
        let outcome = await sessions.run("touch /usr/cloud-agent-x")
        #expect(outcome.exitCode != 0)
        #expect(outcome.output.text(redacting: []).contains("Read-only file system"))
        #expect(!exists(URL(fileURLWithPath: "/usr/cloud-agent-x")))
    }

    @Test("the data directory shows neither other sessions nor its files, and no capability gets past that")
    func dataDirectoryHidden() async throws {
        let sessions = try await Sessions()
        let data = sessions.layout.dataDirectory.path
        let outcome = await sessions.run(
            "ls -A \(data); echo --; ls -A \(data)/workspaces; echo --; ls -A \(data)/homes; echo --; "
                + "cat \(sessions.layout.workspace(sessions.other).path)/private.txt 2>&1; echo --; "
                + "umount \(data) 2>&1; mount -o remount,rw / 2>&1; grep CapEff /proc/self/status"
        )
        let sections = outcome.output.text(redacting: []).components(separatedBy: "--\n")
        #expect(sections.count == 5)
        guard sections.count == 5 else { return }
        #expect(sections[0] == "homes\nworkspaces\n")
        #expect(sections[1] == "\(sessions.own)\n")
        #expect(sections[2] == "\(sessions.own)\n")
        #expect(sections[3].contains("No such file or directory"))
        #expect(!sections[3].contains("other's work"))
        #expect(sections[4].contains("CapEff:\t0000000000000000"))
        #expect(!outcome.output.text(redacting: []).contains("secret.key"))
    }

    @Test("its own PID namespace: it sees only its own few processes")
    func pidNamespace() async throws {
        let sessions = try await Sessions()
        let outcome = await sessions.run("echo $$; ls /proc | grep -c '^[0-9]'")
        let lines = outcome.output.text(redacting: []).split(separator: "\n").compactMap { Int($0) }
        #expect(lines.count == 2)
        #expect((lines.first ?? 99) <= 3)
        #expect((lines.last ?? 99) <= 6)
    }

    @Test("127.0.0.1 is reachable: the runtime must reach the control plane")
    func loopbackNetwork() async throws {
        let sessions = try await Sessions()
        let listener = try LoopbackListener()
        defer { listener.close() }
        // /dev/tcp is a bash feature.
        let argv = sessions.sandbox.wrap(
            ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/\(listener.port) && echo connected"],
            workspace: sessions.layout.workspace(sessions.own), home: sessions.layout.home(sessions.own)
        )
        let bash = await CommandRunner.run(
            argv, environment: ["PATH": GitWorkspaces.sessionPath], workingDirectory: sessions.layout.workspace(sessions.own), timeout: .seconds(60))
        #expect(bash.output.text(redacting: []) == "connected\n")
        #expect(bash.succeeded)
    }

    @Test("a detached runtime in the sandbox: its processes are found below the launched bwrap, and terminate reaches them all")
    func detachedInSandbox() async throws {
        let sessions = try await Sessions()
        let log = sessions.layout.runtimeLog(sessions.own)
        let argv = sessions.sandbox.wrap(
            ["/bin/sh", "-c", "read secret; echo \"got $secret\"; sleep 120 & sleep 120"],
            workspace: sessions.layout.workspace(sessions.own), home: sessions.layout.home(sessions.own)
        )
        let process = try ProcessControl.spawnDetached(
            argv: argv, environment: ["PATH": GitWorkspaces.sessionPath], workingDirectory: sessions.layout.workspace(sessions.own),
            stdin: "runtime-secret\n", logFile: log
        )
        // bwrap (depth 0), its namespace's init (1), sh (2) and two sleeps (3).
        #expect(try await holdsWithin(seconds: 20) { ProcessTree.of(process).members.map(\.depth) == [0, 1, 2, 3, 3] })
        #expect(try await holdsWithin(seconds: 20) { contents(log).contains("got runtime-secret") })
        let members = ProcessTree.of(process).processes
        #expect(await ProcessControl.terminate(process, graceful: { $0.at(depth: 2) }, graceMs: 5_000, reap: { _ = ProcessControl.reapIfExited(process.pid) }))
        #expect(!ProcessControl.anyAlive(members))
    }

    @Test("SIGTERM to the sandbox's program lets it finish its shutdown within the grace")
    func gracefulShutdownInSandbox() async throws {
        let sessions = try await Sessions()
        let log = sessions.layout.runtimeLog(sessions.own)
        let argv = sessions.sandbox.wrap(
            ["/bin/sh", "-c", #"trap 'sleep 0.5; echo finished; exit 0' TERM; echo ready; for i in $(seq 1200); do sleep 0.1; done"#],
            workspace: sessions.layout.workspace(sessions.own), home: sessions.layout.home(sessions.own)
        )
        let process = try ProcessControl.spawnDetached(
            argv: argv, environment: ["PATH": GitWorkspaces.sessionPath], workingDirectory: sessions.layout.workspace(sessions.own),
            stdin: nil, logFile: log
        )
        #expect(try await holdsWithin(seconds: 20) { contents(log).contains("ready") })
        #expect(await ProcessControl.terminate(process, graceful: { $0.at(depth: 2) }, graceMs: 10_000, reap: { _ = ProcessControl.reapIfExited(process.pid) }))
        #expect(contents(log).contains("finished"))
    }

    @Test(
        "the process that launched bwrap exits (a control plane restarting): the sandbox lives on, and a stop of the launch then takes everything inside down")
    func outlivesItsLauncher() async throws {
        let sessions = try await Sessions()
        let argv = sessions.sandbox.wrap(
            ["/bin/sh", "-c", "sleep 120 & sleep 120"], workspace: sessions.layout.workspace(sessions.own), home: sessions.layout.home(sessions.own)
        )
        // A launcher that starts the sandbox, prints bwrap's pid, and exits once told to (when
        // the sandbox is up): bwrap's parent is gone, as when `serve` is stopped or killed.
        let pidFile = sessions.directory.path("bwrap.pid")
        let release = sessions.directory.path("release")
        let quoted = argv.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let launcher = try ProcessControl.spawnDetached(
            argv: ["/bin/sh", "-c", "\(quoted) >/dev/null 2>&1 </dev/null & echo $! > \(pidFile.path); while [ ! -e \(release.path) ]; do sleep 0.05; done"],
            environment: ["PATH": GitWorkspaces.sessionPath], workingDirectory: sessions.layout.workspace(sessions.own),
            stdin: nil, logFile: sessions.layout.runtimeLog(sessions.own)
        )
        defer { ProcessControl.killTree(launcher); _ = ProcessControl.reapIfExited(launcher.pid) }
        func bwrapPid() -> Int32? { Int32(contents(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect(try await holdsWithin(seconds: 20) { bwrapPid() != nil })
        let pid = try #require(bwrapPid())
        let stat = try #require(ProcStat.read(pid))
        let bwrap = SpawnedProcess(pid: pid, startTime: stat.startTime)
        defer { ProcessControl.killTree(bwrap) }
        #expect(try await holdsWithin(seconds: 20) { ProcessTree.of(bwrap).members.count == 5 }, "bwrap, the sandbox's init, sh and its two sleeps")
        let inside = ProcessTree.of(bwrap).members.filter { $0.depth > 0 }.map(\.process)
        try Data().write(to: release)
        #expect(try await holdsWithin(seconds: 20) { ProcessControl.reapIfExited(launcher.pid) != nil })
        // Well after the launcher is gone, everything inside still runs.
        try await Task.sleep(for: .milliseconds(300))
        #expect(ProcessControl.isAlive(bwrap))
        #expect(inside.allSatisfy(ProcessControl.isAlive), "the sandbox died with its launcher")
        #expect(await ProcessControl.terminate(bwrap, graceful: { $0.at(depth: 2) }, graceMs: 200))
        #expect(!ProcessControl.anyAlive(inside + [bwrap]))
    }

    @Test("SIGKILL of the sandbox's init takes everything inside down with it (PID 1 of its namespace)")
    func initTakesTheSandboxDown() async throws {
        let sessions = try await Sessions()
        let argv = sessions.sandbox.wrap(
            ["/bin/sh", "-c", "(sleep 120 &) ; sleep 120"], workspace: sessions.layout.workspace(sessions.own), home: sessions.layout.home(sessions.own)
        )
        let process = try ProcessControl.spawnDetached(
            argv: argv, environment: ["PATH": GitWorkspaces.sessionPath], workingDirectory: sessions.layout.workspace(sessions.own),
            stdin: nil, logFile: sessions.layout.runtimeLog(sessions.own)
        )
        defer { ProcessControl.killTree(process); _ = ProcessControl.reapIfExited(process.pid) }
        #expect(try await holdsWithin(seconds: 20) { ProcessTree.of(process).members.count >= 4 }, "bwrap, the sandbox's init, sh, the sleeps")
        let inside = ProcessTree.of(process).members.filter { $0.depth > 1 }.map(\.process)
        let initProcess = try #require(ProcessTree.of(process).at(depth: 1).first)
        #expect(ProcessControl.signal(initProcess, SIGKILL))
        #expect(try await holdsWithin(seconds: 20) { !ProcessControl.anyAlive(inside) })
    }

    @Test(
        "nothing of the host but the system: no home directory, no /root, no /run, no other /tmp, /etc's secrets empty; uid 1000 without capabilities; a read-only root"
    )
    func onlyTheSystemIsVisible() async throws {
        let sessions = try await Sessions()
        // A file of the control plane's user, in its home directory.
        let hostHome = FileManager.default.homeDirectoryForCurrentUser
        let secret = hostHome.appendingPathComponent(".cloud-agent-sandbox-test-\(UUID().uuidString)")
        try Data("host secret".utf8).write(to: secret)
        defer { try? FileManager.default.removeItem(at: secret) }
        let outsider = sessions.directory.path("outside.txt")
        try Data("outside-content".utf8).write(to: outsider)
        let outcome = await sessions.run(
            "cat \(secret.path) 2>&1; echo --; ls -A \(hostHome.path) 2>&1; echo --; cat \(outsider.path) 2>&1; echo --; "
                + "ls -A /home /root /run /srv /mnt /var/lib 2>&1 | grep -v 'No such file' | grep -v ':$' ; echo --; "
                + "wc -c < /etc/shadow 2>&1; echo --; id -u; grep CapEff /proc/self/status; touch /x 2>&1; echo --; ls /usr/bin/env"
        )
        let text = outcome.output.text(redacting: [])
        let sections = text.components(separatedBy: "--\n")
        try #require(sections.count == 7, "\(text)")
        #expect(sections[0].contains("No such file or directory") && !sections[0].contains("host secret"))
        #expect(sections[1].contains("No such file or directory") || sections[1].isEmpty, "\(sections[1])")
        #expect(sections[2].contains("No such file or directory") && !sections[2].contains("outside-content"))
        #expect(sections[3].trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "visible: \(sections[3])")
        // An empty file or a device the sandbox may not open: either way, nothing of the host's.
        #expect(sections[4] == "0\n" || sections[4].contains("Permission denied"), "\(sections[4])")
        if sessions.sandbox.userNamespace { #expect(sections[5].hasPrefix("1000\n")) }
        #expect(sections[5].contains("CapEff:\t0000000000000000"))
        #expect(sections[5].contains("Read-only file system"))
        #expect(sections[6] == "/usr/bin/env\n")
    }

    @Test("setup commands run in the sandbox, and restore checks out an existing workspace from inside it")
    func workspacesInSandbox() async throws {
        let fixture = try Fixture(sandbox: .bwrap)
        let source = try await makeRepository(in: fixture.directory)
        let id = SessionID()
        try Data("key".utf8).write(to: fixture.layout.dataDirectory.appendingPathComponent("secret.key"))
        let request = fixture.request(
            id, repo: RepoSource(url: source.path),
            setup: [
                "ls -A \(fixture.layout.dataDirectory.path) > data.txt",
                "touch /usr/cloud-agent-x 2>/dev/null && echo escaped > escaped.txt; true",
                "echo in-home > \"$HOME/h.txt\"",
            ])
        try await fixture.workspaces.prepare(request)
        let workspace = fixture.layout.workspace(id)
        #expect(contents(workspace.appendingPathComponent("data.txt")) == "homes\nworkspaces\n")
        #expect(!exists(workspace.appendingPathComponent("escaped.txt")))
        #expect(contents(fixture.layout.home(id).appendingPathComponent("h.txt")) == "in-home\n")

        try await sh("git checkout --quiet main", in: workspace)
        let failures = await fixture.workspaces.restore(request)
        #expect(failures == [])
        #expect(try await fixture.git("symbolic-ref --short HEAD", id) == "session/\(id)")
    }
}

@Suite("bwrap arguments")
struct SandboxWrapperArgumentTests {
    @Test("a program below /tmp (a build in a temporary clone) is bound back read-only after /tmp is hidden")
    func programBelowTmpIsVisible() {
        let wrapper = SandboxWrapper(kind: .bwrap, dataDirectory: URL(fileURLWithPath: "/srv/data"))
        let argv = wrapper.wrap(
            ["/tmp/clone/.build/debug/cloud-agent-runtime"], workspace: URL(fileURLWithPath: "/srv/data/workspaces/w"),
            home: URL(fileURLWithPath: "/srv/data/homes/h")
        )
        let tmpfs = argv.firstIndex(of: "/tmp")!
        let bind = argv.firstIndex(of: "/tmp/clone/.build/debug")!
        #expect(argv[bind - 1] == "--ro-bind-try")
        #expect(bind > tmpfs)
        #expect(argv.last == "/tmp/clone/.build/debug/cloud-agent-runtime")
        let elsewhere = wrapper.wrap(
            ["/usr/bin/true"], workspace: URL(fileURLWithPath: "/srv/data/workspaces/w"), home: URL(fileURLWithPath: "/srv/data/homes/h"))
        #expect(!elsewhere.contains("/usr/bin"))
    }
}
