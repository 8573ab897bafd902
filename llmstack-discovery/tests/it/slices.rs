// TEMPORARY recorder (removed after recording).
#[tokio::test]
#[ignore]
async fn record() {
    let server = llmstack_test_support::kube_apiserver::KubeApiServer::start().await;
    let marker = std::path::Path::new("/tmp/slices-rec");
    std::fs::create_dir_all(marker).unwrap();
    std::fs::write(marker.join("kubeconfig-path"), server.kubeconfig_path().display().to_string()).unwrap();
    std::fs::write(marker.join("url"), server.url()).unwrap();
    std::fs::write(marker.join("ca"), server.ca_path().display().to_string()).unwrap();
    while !marker.join("done").exists() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
