@testable import CloudAgentSandbox
import CloudAgentTestSupport
import Testing

@Suite("Output tails and redaction")
struct OutputTailTests {
    @Test("every occurrence of every secret is masked, the longer first")
    func redaction() {
        #expect(Redaction.redact("a=abc b=abcdef abc", secrets: ["abc", "abcdef", ""]) == "a=*** b=*** ***")
        #expect(Redaction.redact("nothing here", secrets: []) == "nothing here")
    }

    @Test("the tail is the end of the output, at most 4 KiB, with the note on its own line")
    func limit() {
        var tail = OutputTail()
        for index in 0..<10_000 { tail.append("line \(index)\n") }
        let text = tail.text(redacting: [], note: "timed out after 1 s")
        #expect(text.utf8.count <= OutputTail.limit)
        #expect(text.hasSuffix("line 9999\n\ntimed out after 1 s"))
        #expect(tail.text(redacting: []).utf8.count == OutputTail.limit)
    }

    @Test("a secret cut at the front of the kept bytes leaves no fragment")
    func fragmentAtFront() {
        let secret = "SECRETVALUE-0123456789"
        var tail = OutputTail(capacity: 64)
        tail.append(String(repeating: "x", count: 100) + secret + String(repeating: "y", count: 50))
        // capacity 64 keeps the last 64 bytes: "…456789" + 50 y's — the end of the secret.
        let text = tail.text(redacting: [secret])
        #expect(!text.contains("456789"))
        #expect(text.allSatisfy { $0 == "y" })
    }

    @Test("a multi-byte character cut at the front is dropped, not mangled")
    func utf8Boundary() {
        var tail = OutputTail()
        tail.append(String(repeating: "é", count: 3000))
        let text = tail.text(redacting: [])
        #expect(text.utf8.count <= OutputTail.limit)
        #expect(text.allSatisfy { $0 == "é" })
    }

    @Test("a masked URL password in a step name")
    func displayURL() {
        #expect(GitWorkspaces.displayURL("https://user:pw@example.com/r.git") == "https://***@example.com/r.git")
        #expect(GitWorkspaces.displayURL("ssh://git@example.com/r.git") == "ssh://git@example.com/r.git")
        #expect(GitWorkspaces.displayURL("git@example.com:r.git") == "git@example.com:r.git")
        #expect(GitWorkspaces.displayURL("/srv/repos/r") == "/srv/repos/r")
    }
}
