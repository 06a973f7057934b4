// Command vcsim-launcher runs govmomi's vCenter simulator (simulator.VPX) for the project's tests.
//
// Built in GOPATH mode from Debian's golang-github-vmware-govmomi-dev (see vcsim.py). It serves the
// SDK over TLS on the given address, accepts only the given user and password, writes the service URL
// (without credentials) and the server certificate to files, and stops on SIGTERM or SIGINT.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
	username := flag.String("username", "user", "the only user name the simulator accepts")
	password := flag.String("password", "pass", "the only password the simulator accepts")
	urlFile := flag.String("url-file", "", "write the SDK URL here once serving")
	certFile := flag.String("cert-file", "", "write the server certificate (PEM) here once serving")
	flag.Parse()

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: creating the model: %v", err)
	}
	defer model.Remove()

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	// Our own P-256 certificate for 127.0.0.1: the built-in httptest certificate has a 1024-bit key that
	// OpenSSL's default security level rejects, so TLS verification could not be tested with it.
	cert, err := selfSignedCertificate()
	if err != nil {
		log.Fatalf("vcsim: making a certificate: %v", err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.RegisterEndpoints = true

	server := model.Service.NewServer()
	defer server.Close()

	plain := *server.URL
	plain.User = nil
	if *certFile != "" {
		block := &pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw}
		if err := ioutil.WriteFile(*certFile, pem.EncodeToMemory(block), 0o644); err != nil {
			log.Fatalf("vcsim: writing %s: %v", *certFile, err)
		}
	}
	if *urlFile != "" {
		// Written last and renamed into place: its presence means the server is ready.
		tmp := *urlFile + ".tmp"
		if err := ioutil.WriteFile(tmp, []byte(plain.String()+"\n"), 0o644); err != nil {
			log.Fatalf("vcsim: writing %s: %v", tmp, err)
		}
		if err := os.Rename(tmp, *urlFile); err != nil {
			log.Fatalf("vcsim: renaming %s: %v", tmp, err)
		}
	}
	fmt.Printf("vcsim serving %s\n", plain.String())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}

// selfSignedCertificate returns a fresh self-signed CA certificate valid for 127.0.0.1 and localhost.
func selfSignedCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcsim test server", Organization: []string{"systemvm-template tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
