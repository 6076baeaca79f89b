from vpns_deploy.cli import main

main()
